package gateway

// For the external tests: the independent Standard Webhooks verifier.
var (
	VerifyStandardWebhook = verifyStandardWebhook
	NewTestSecret         = newTestSecret
)

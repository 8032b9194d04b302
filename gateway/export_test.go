package gateway

// For the external tests: the independent Standard Webhooks verifier.
var (
	VerifyStandardWebhook = verifyStandardWebhook
	NewTestSecret         = newTestSecret
)

// WithWebhookSlots returns cfg with its gateway running n webhook jobs at
// once instead of the default 64.
func WithWebhookSlots(cfg Config, n int) Config {
	cfg.Webhooks.slots = n
	return cfg
}

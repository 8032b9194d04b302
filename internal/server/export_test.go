package server

// WithStreamHook returns cfg with f called each time a long-lived request
// (long-poll, event stream, ...) reaches the gateway.
func WithStreamHook(cfg Config, f func()) Config {
	cfg.streamStarted = f
	return cfg
}

// TracesWanted exposes the OTEL_* environment rule for traces.
var TracesWanted = tracesWanted

// ExposureWarning exposes the warning logged about what an address
// exposes.
var ExposureWarning = exposureWarning

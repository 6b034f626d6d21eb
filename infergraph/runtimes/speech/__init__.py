"""Speech-to-text (Whisper): decode audio, cut it into windows at silences, and run the windows of many
requests through one batched engine, most urgent first. No Ray, no MLflow."""

"""What a plan is made of, as validated data: profiles, plans, GPUs, units, vocabulary, calibration schema, loading."""

"""One small pure estimator per memory category; see memplan.phases for how they combine."""

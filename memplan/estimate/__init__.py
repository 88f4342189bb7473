"""The estimate: one small pure estimator per memory category, the phases that sum them, the peak.

    spec (profile, plan, calibration) -> context -> category estimators -> phases -> peak (Estimate)
"""

from memplan.estimate.peak import Estimate, estimate

__all__ = ["Estimate", "estimate"]

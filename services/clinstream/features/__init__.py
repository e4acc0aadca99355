"""Event-time feature engineering over the pseudonymised topics (wearable windows and biobank samples)."""

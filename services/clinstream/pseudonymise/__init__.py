"""Pseudonymisation at the source: key ring, keyed pseudonyms, minimisation, consent enforcement and its worker."""

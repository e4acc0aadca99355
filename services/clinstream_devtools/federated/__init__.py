"""Demo data for the federated task (synthetic or through each site's pipeline) and a one-machine federation."""

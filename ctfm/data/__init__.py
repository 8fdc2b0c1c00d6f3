"""Reading, validating, generating and caching CT volumes."""

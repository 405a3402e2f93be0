"""Authentication and access control: TLS client checks, SASL, polkit."""

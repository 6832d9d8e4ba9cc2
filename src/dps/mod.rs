//! The DPS service API client.

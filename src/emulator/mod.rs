//! A local stand-in for the DPS service API.

//! Helpers for tests against the DPS emulator.

use std::{sync::Arc, time::Duration};

use dps_emulator::{EmulatorConfig, RunningEmulator};
use dps_operator::dps::{
    Client, ClientConfig,
    auth::{Authenticator, ConnectionString},
    rate_limit::RateLimiter,
};

/// Starts an emulator over HTTPS on a free port.
pub async fn emulator(config: EmulatorConfig) -> RunningEmulator {
    RunningEmulator::start(config).await.expect("the emulator starts")
}

/// A client of `emulator` with its connection string, trusting its CA.
pub fn client(emulator: &RunningEmulator) -> Client {
    client_with(emulator, &emulator.connection_string(), 100_000, Duration::from_secs(10))
}

pub fn client_with(
    emulator: &RunningEmulator,
    connection_string: &str,
    per_minute: u32,
    timeout: Duration,
) -> Client {
    let connection: ConnectionString = connection_string.parse().expect("a valid connection string");
    Client::new(ClientConfig {
        host: connection.host_name.clone(),
        authenticator: Arc::new(Authenticator::shared_access(connection)),
        rate_limiter: Arc::new(RateLimiter::new(per_minute)),
        extra_root_certificates: emulator.ca_certificate().map(str::to_owned),
        timeout,
        resolve: Vec::new(),
        observer: None,
    })
    .expect("a client")
}

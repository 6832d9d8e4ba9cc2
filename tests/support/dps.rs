//! Helpers for tests against the DPS emulator.

use std::{net::SocketAddr, sync::Arc, time::Duration};

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
    build(connection_string, emulator.ca_certificate().map(str::to_owned), None, per_minute, timeout)
}

/// A client of the DPS `connection_string` names, trusting `ca` and reaching its host at
/// `address` (an emulator whose host name this machine cannot resolve).
pub fn client_at(connection_string: &str, ca: String, address: SocketAddr) -> Client {
    build(connection_string, Some(ca), Some(address), 1000, Duration::from_secs(10))
}

fn build(
    connection_string: &str,
    ca: Option<String>,
    address: Option<SocketAddr>,
    per_minute: u32,
    timeout: Duration,
) -> Client {
    let connection: ConnectionString = connection_string.parse().expect("a valid connection string");
    let host = connection.host_name.clone();
    Client::new(ClientConfig {
        resolve: address.map(|address| (host.clone(), address)).into_iter().collect(),
        host,
        authenticator: Arc::new(Authenticator::shared_access(connection)),
        rate_limiter: Arc::new(RateLimiter::new(per_minute)),
        extra_root_certificates: ca,
        timeout,
        observer: None,
    })
    .expect("a client")
}

//! Waiting for the signals that ask a process to stop.

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

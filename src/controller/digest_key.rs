//! The key of the digests a status keeps of Secrets and of what was written to DPS.

/// The key status digests are made with. Only the operator holds it, so a digest in a status
/// confirms nothing about a guessed key to whoever can read the resource.
#[derive(Clone)]
pub struct DigestKey(std::sync::Arc<[u8]>);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// A new random key.
    pub fn random() -> Self {
        Self(crate::random_bytes::<32>().to_vec().into())
    }

    /// `hmac-sha256:` and the hex HMAC of what `update` feeds in.
    pub(crate) fn sign(&self, update: impl FnOnce(&mut ring::hmac::Context)) -> String {
        let mut context =
            ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0));
        update(&mut context);
        let hex: String = context.sign().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("hmac-sha256:{hex}")
    }

    /// The key in `bytes`, when there are 32 or more of them.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= 32).then(|| Self(bytes.into()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

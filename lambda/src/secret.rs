//! The activation code is a bearer secret: whoever holds it can register a server
//! into the account. This type makes it hard to leak by accident: it has no
//! `Display`, its `Debug` is redacted, and reading it takes an explicit call.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ActivationCode(String);

impl ActivationCode {
    pub fn new(code: impl Into<String>) -> Self {
        Self(code.into())
    }

    /// The code itself, for the one place that must send it: the HTTP answer
    /// and the Parameter Store value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActivationCode(<redacted>)")
    }
}

/// The code encrypted with the codes' KMS key under an encryption context that names
/// the deployment, the pool and the activation (`aws/keys.rs`): what the pool item
/// carries beside its activation, so a cold process needs no Parameter Store read.
/// Not a secret by itself (only the key's holders can open it), but it is never
/// logged either: its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCode(Vec<u8>);

impl SealedCode {
    pub fn new(ciphertext: impl Into<Vec<u8>>) -> Self {
        Self(ciphertext.into())
    }

    /// The ciphertext, for the pool item and for KMS Decrypt.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedCode(<{} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_code() {
        let code = ActivationCode::new("Fjz3/sZfSvv78EXAMPLE");
        let shown = format!("{code:?} {:?}", Some(&code));
        assert!(!shown.contains("Fjz3"), "{shown}");
        assert_eq!(code.expose(), "Fjz3/sZfSvv78EXAMPLE");
    }

    #[test]
    fn debug_output_of_a_sealed_code_shows_only_its_length() {
        let sealed = SealedCode::new(b"Fjz3-ciphertext".to_vec());
        let shown = format!("{sealed:?} {:?}", Some(&sealed));
        assert!(!shown.contains("Fjz3"), "{shown}");
        assert_eq!(shown, "SealedCode(<15 bytes>) Some(SealedCode(<15 bytes>))");
    }
}

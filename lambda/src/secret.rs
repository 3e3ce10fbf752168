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
}

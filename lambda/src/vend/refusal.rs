//! Refusal reports: a server whose code SSM refused says so, and the pool heals at
//! once instead of handing the same dead activation to the next servers.
//!
//! DESIGN.md, "Refusal reports": only an activation this pool committed may be
//! reported (`403 NotConfirmable` otherwise, so nobody makes the service ask SSM
//! about arbitrary IDs); SSM is asked at once, once for a burst of reports
//! (`ActivationChecks::recheck`); when SSM agrees the activation is unusable, it is
//! retired the way a failed verification retires it (the vend's `rotate_or_wait`)
//! and every instance record that would hand it out again is dropped; when SSM does
//! not agree, the report is counted and logged and nothing changes.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use crate::error::VendError;
use crate::metrics;
use crate::metrics::WasteReason;
use crate::pool::directory::Pool;
use crate::pool::state::RotationReason;
use crate::vend::Vendor;

/// What SSM told the server, as the SSM Agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InvalidActivation,
    ActivationExpired,
    RegistrationLimitExceeded,
}

impl Refusal {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "InvalidActivation" => Some(Self::InvalidActivation),
            "ActivationExpired" => Some(Self::ActivationExpired),
            "RegistrationLimitExceeded" => Some(Self::RegistrationLimitExceeded),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidActivation => "InvalidActivation",
            Self::ActivationExpired => "ActivationExpired",
            Self::RegistrationLimitExceeded => "RegistrationLimitExceeded",
        })
    }
}

/// A report as the body gives it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalReport {
    pub activation_id: String,
    pub refusal: Refusal,
}

/// SSM's activation IDs are UUIDs: `8-4-4-4-12` hex digits.
pub fn valid_activation_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The report's `ActivationId` and `Error`, strictly: a malformed ID or an error SSM
/// does not refuse codes with is a 400.
pub fn parse_report(activation_id: &str, error: &str) -> Result<RefusalReport, VendError> {
    if !valid_activation_id(activation_id) {
        return Err(VendError::InvalidParameter {
            parameter: "ActivationId",
            problem: "must be an SSM activation ID (a UUID)".into(),
        });
    }
    let refusal = Refusal::parse(error).ok_or_else(|| VendError::InvalidParameter {
        parameter: "Error",
        problem: "must be InvalidActivation, ActivationExpired or RegistrationLimitExceeded".into(),
    })?;
    Ok(RefusalReport {
        activation_id: activation_id.to_owned(),
        refusal,
    })
}

impl Vendor {
    /// Answers a refusal report: `Ok(true)` when SSM confirmed the activation
    /// unusable (it is then retired and its records dropped), `Ok(false)` when SSM
    /// still honours it (nothing changes). Within `VENDING_DEADLINE`.
    pub async fn report_refusal(
        &self,
        pool: &str,
        report: &RefusalReport,
        machine_id: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<bool, VendError> {
        let arrived = Instant::now();
        let work = async {
            let pool = self.directory.lookup(pool).await?;
            if !pool.settings.admits(source) {
                return Err(VendError::Forbidden {
                    pool: pool.name.clone(),
                    source_address: source.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string()),
                });
            }
            let id = report.activation_id.as_str();
            if self.store.committed_to(id).await?.as_deref() != Some(pool.name.as_str()) {
                tracing::warn!(
                    pool = %pool.name,
                    activation_id = id,
                    machine_id = machine_id.unwrap_or("-"),
                    "a refusal report names an activation this pool never vended; not asking SSM"
                );
                return Err(VendError::NotConfirmable(format!(
                    "pool `{}` never vended activation `{id}`",
                    pool.name
                )));
            }
            let confirmed = !self.checks.recheck(id, arrived).await?;
            metrics::registration_refused(&pool.name, confirmed);
            if !confirmed {
                tracing::warn!(
                    pool = %pool.name,
                    activation_id = id,
                    error = %report.refusal,
                    machine_id = machine_id.unwrap_or("-"),
                    "a server reported its activation refused, but SSM still honours it; nothing changed"
                );
                return Ok(false);
            }
            self.heal(&pool, id).await?;
            tracing::info!(
                pool = %pool.name,
                activation_id = id,
                error = %report.refusal,
                machine_id = machine_id.unwrap_or("-"),
                "a refusal SSM confirmed: the activation is retired"
            );
            Ok(true)
        };
        match tokio::time::timeout(self.config.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(VendError::NoActivationYet),
        }
    }

    /// Once per process and activation: drops the records that would hand it out
    /// again, then retires it if it is still the pool's current activation.
    async fn heal(&self, pool: &Pool, activation_id: &str) -> Result<(), VendError> {
        let slot = self.retired.slot(activation_id);
        let mut healed = slot.lock().await;
        if *healed {
            return Ok(());
        }
        let dropped = self.store.forget_instances_of(&pool.name, activation_id).await?;
        tracing::info!(pool = %pool.name, activation_id, records = dropped, "dropped the instance records of a refused activation");
        self.retire(pool, activation_id).await?;
        *healed = true;
        Ok(())
    }

    /// What a vend does when the verification finds its activation refused: the
    /// process's block of its slots is wasted, and the pool rotates (or waits for
    /// the rotation someone else runs), until the activation is no longer current.
    /// A standby is never handed out before its promotion, which this process
    /// then refuses (the verdict is remembered) and rotates like any dead current.
    async fn retire(&self, pool: &Pool, activation_id: &str) -> Result<(), VendError> {
        self.blocks.discard(&pool.name, activation_id, WasteReason::Deleted);
        let deadline = Instant::now() + self.config.wait;
        let mut waits = 0;
        loop {
            let state = self.store.pool(&pool.name).await?;
            if state.activation.as_ref().is_none_or(|a| a.id != activation_id) {
                return Ok(());
            }
            self.rotate_or_wait(
                pool,
                RotationReason::DeletedOutOfBand,
                Some(activation_id),
                deadline,
                &mut waits,
            )
            .await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9b";

    #[test]
    fn the_three_refusals_of_the_ssm_agent_are_reports() {
        for (text, refusal) in [
            ("InvalidActivation", Refusal::InvalidActivation),
            ("ActivationExpired", Refusal::ActivationExpired),
            ("RegistrationLimitExceeded", Refusal::RegistrationLimitExceeded),
        ] {
            let report = parse_report(ID, text).unwrap();
            assert_eq!(report.refusal, refusal);
            assert_eq!(report.refusal.to_string(), text);
        }
    }

    #[test]
    fn any_other_error_is_a_bad_request() {
        for text in ["", "invalidactivation", "AccessDenied", "Throttling"] {
            let e = parse_report(ID, text).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{text}");
        }
    }

    #[test]
    fn an_activation_id_is_a_uuid() {
        assert!(valid_activation_id(ID));
        assert!(valid_activation_id(&ID.to_uppercase()));
        for bad in [
            "",
            "mi-0123456789abcdef0",
            "0d6e8a37-5c2b-4f1e-9a4d",
            "0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9bb",
            "0d6e8a37-5c2b-4f1e-9a4d-3b7c2e1f0a9g",
            "0d6e8a375c2b-4f1e-9a4d-3b7c2e1f0a9b-",
        ] {
            assert!(!valid_activation_id(bad), "{bad}");
            assert!(parse_report(bad, "InvalidActivation").is_err(), "{bad}");
        }
    }
}

//! The scenarios a run can measure, and what each one changes.

use serde::Serialize;

/// The hot-path phase runs with this registration limit so that it never rotates.
pub const STEADY_LIMIT: u32 = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    /// A boot storm on a pool that starts empty, limit 100.
    Steady,
    /// Limit 10: a rotation every 10 vends, under load.
    StormWithRotation,
    /// 30% ThrottlingException on every DynamoDB and SSM call of the main phase.
    Throttled,
}

/// One fault the emulator injects (`POST /_emulator/faults`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Fault {
    pub operation: &'static str,
    pub error: &'static str,
    pub rate: f64,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Steady, Scenario::StormWithRotation, Scenario::Throttled];

    /// The name on the command line, in file names and in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::StormWithRotation => "storm-with-rotation",
            Scenario::Throttled => "throttled",
        }
    }

    /// The main phase's registration limit when `--limit` is not given.
    pub fn default_limit(self) -> u32 {
        match self {
            Scenario::StormWithRotation => 10,
            Scenario::Steady | Scenario::Throttled => 100,
        }
    }

    /// Faults injected for the main phase only.
    pub fn faults(self) -> Option<Vec<Fault>> {
        let throttle = |operation| Fault {
            operation,
            error: "ThrottlingException",
            rate: 0.3,
        };
        match self {
            Scenario::Throttled => Some(vec![throttle("DynamoDB.*"), throttle("SSM.*")]),
            Scenario::Steady | Scenario::StormWithRotation => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_throttled_injects_faults_and_only_storm_lowers_the_limit() {
        assert_eq!(
            serde_json::to_value(Scenario::Throttled.faults()).unwrap(),
            serde_json::json!([
                {"operation": "DynamoDB.*", "error": "ThrottlingException", "rate": 0.3},
                {"operation": "SSM.*", "error": "ThrottlingException", "rate": 0.3},
            ])
        );
        assert_eq!(Scenario::Steady.faults(), None);
        assert_eq!(
            Scenario::ALL.map(Scenario::default_limit),
            [100, 10, 100],
            "steady, storm-with-rotation, throttled"
        );
    }
}

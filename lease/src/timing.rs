//! Lease timings and the constraints that make them safe (reference §3.9).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The lease parameters, shared by the holder (which asks for the lease)
/// and carried in every request to the voters (which grant it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// `T`: how long a majority of grants keeps a holder active.
    pub lease: Duration,
    /// `r`: how often the holder renews (normally `T/5`).
    pub renew_interval: Duration,
    /// `τ`: how long the holder waits for one round of replies.
    pub rpc_timeout: Duration,
    /// `ρ` in parts per million: the largest clock-rate error assumed.
    pub drift_ppm: u32,
    /// `δ`: extra margin the holder gives up at the end of its lease.
    pub margin: Duration,
}

/// Why a set of timings is unsafe; each names the rule and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimingError {
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The offending setting.
        field: &'static str,
    },
    /// A duration is longer than any lease can sensibly be: a dead active
    /// would hold the fleet that long (and arithmetic on it could
    /// overflow).
    #[error("{field} must be at most {max:?}: a dead active coordinator keeps the lease that long")]
    TooLong {
        /// The offending setting.
        field: &'static str,
        /// The longest allowed.
        max: Duration,
    },
    /// ρ is implausibly large; the lease would mean nothing.
    #[error("drift_ppm {0} is above 100000 (10%); clocks that drift this much cannot time a lease")]
    DriftTooLarge(u32),
    /// Constraint 1: the holder must survive two slow renewal rounds.
    #[error(
        "renew_interval + 2 × rpc_timeout ({needed:?}) must not exceed lease × (1 − drift) − margin \
         ({usable:?}); shorten renew_interval or rpc_timeout, or lengthen lease"
    )]
    RenewBudget {
        /// `r + 2τ`.
        needed: Duration,
        /// `T(1-ρ) - δ`.
        usable: Duration,
    },
}

/// The longest lease (and any of its durations) accepted, in a
/// configuration or on the wire.
pub const MAX_LEASE: Duration = Duration::from_secs(600);

impl Timing {
    /// The defaults of the reference: `T` 10 s, `r` 2 s, `τ` 1 s, `ρ` 1 %, `δ` 1 s.
    pub fn standard() -> Timing {
        Timing {
            lease: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(1),
            drift_ppm: 10_000,
            margin: Duration::from_secs(1),
        }
    }

    /// Checks the reference §3.9 constraints that concern the lease.
    pub fn validate(&self) -> Result<(), TimingError> {
        for (field, d) in [
            ("lease", self.lease),
            ("renew_interval", self.renew_interval),
            ("rpc_timeout", self.rpc_timeout),
            ("margin", self.margin),
        ] {
            if d.is_zero() {
                return Err(TimingError::Zero { field });
            }
            if d > MAX_LEASE {
                return Err(TimingError::TooLong {
                    field,
                    max: MAX_LEASE,
                });
            }
        }
        if self.drift_ppm > 100_000 {
            return Err(TimingError::DriftTooLarge(self.drift_ppm));
        }
        let needed = self.renew_interval + self.rpc_timeout * 2;
        let usable = self.holder_lease();
        if needed > usable {
            return Err(TimingError::RenewBudget { needed, usable });
        }
        Ok(())
    }

    fn rho(&self) -> f64 {
        f64::from(self.drift_ppm) / 1_000_000.0
    }

    /// `T(1-ρ) - δ`: how long the holder trusts a majority of grants,
    /// counted from before it sent the requests.
    pub fn holder_lease(&self) -> Duration {
        self.lease
            .mul_f64(1.0 - self.rho())
            .saturating_sub(self.margin)
    }

    /// `T(1+ρ)`: how long a voter keeps a grant alive; the voter is patient.
    pub fn grant(&self) -> Duration {
        self.lease.mul_f64(1.0 + self.rho())
    }

    /// `T(1+ρ) + δ`: how long a restarted voter grants nothing, since the
    /// timers of its grants were lost.
    pub fn quarantine(&self) -> Duration {
        self.grant() + self.margin
    }

    /// Constraint 2: the longest a takeover can take after the active dies,
    /// `T(1+ρ) + δ + r + τ`.
    pub fn takeover_bound(&self) -> Duration {
        self.quarantine() + self.renew_interval + self.rpc_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_timings_satisfy_the_constraints() {
        let t = Timing::standard();
        t.validate().unwrap();
        assert_eq!(t.holder_lease(), Duration::from_millis(8_900));
        assert_eq!(t.grant(), Duration::from_millis(10_100));
        assert_eq!(t.takeover_bound(), Duration::from_millis(14_100));
    }

    #[test]
    fn unsafe_timings_are_refused_with_the_rule() {
        let mut t = Timing::standard();
        t.renew_interval = Duration::from_secs(8);
        let e = t.validate().unwrap_err();
        assert!(matches!(e, TimingError::RenewBudget { .. }), "{e}");
        assert!(e.to_string().contains("shorten renew_interval"));
        let mut t = Timing::standard();
        t.margin = Duration::ZERO;
        assert_eq!(t.validate(), Err(TimingError::Zero { field: "margin" }));
        let mut t = Timing::standard();
        t.drift_ppm = 200_000;
        assert!(matches!(t.validate(), Err(TimingError::DriftTooLarge(_))));
    }
}

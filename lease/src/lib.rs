//! The lease and epoch protocol of the coordinator pair (design: the
//! brief §4, the reference §3.3–3.4), as two state machines fed with
//! messages and a clock reading and returning what to send and what to
//! persist. Nothing here performs I/O or reads a clock, so the same code
//! runs in the agents and coordinators and in the deterministic simulation
//! (`tests/simulation/`) that checks the invariants over many seeds.
//!
//! - [`voter::Voter`] runs in every agent (and witness): it promises
//!   epochs, grants leases, and fences commands by epoch.
//! - [`holder::Holder`] runs in every coordinator: it acquires and renews
//!   the lease and says when this coordinator may issue commands.
//!
//! Time is a [`Duration`](std::time::Duration) since an arbitrary origin
//! of the caller's clock: monotonic for voters, `CLOCK_BOOTTIME` for
//! holders. Clocks are never compared across processes.

pub mod epoch;
pub mod holder;
pub mod timing;
pub mod voter;
pub mod voters;

pub use epoch::{Epoch, HolderId, MAX_TERM_STEP};
pub use holder::{Holder, HolderAction, Role, StepDownReason};
pub use timing::{Timing, TimingError};
pub use voter::{
    CommandRefusal, CommandVerdict, FenceRecord, Handled, RejectReason, StaleEpoch, Voter,
    VoterReply, VoterRequest, millis,
};
pub use voters::{VoterSet, VoterSetError};

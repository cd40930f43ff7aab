//! The kinds of change the audit trail records, by the names the JSON and
//! `[[admin.webhook]] events` use. A leaf: the configuration reads these
//! names without depending on the trail itself.

use serde::Serialize;

/// What an event records. Its name is what `[[admin.webhook]] events` and
/// the JSON say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A service's weights set through the API.
    Weights,
    /// A pool or endpoint set to drain or back to ready.
    Drain,
    ShiftStart,
    /// A shift's step passed and the next one is in force.
    ShiftStep,
    ShiftDone,
    /// A step breached a limit: the weights from before the shift are back.
    ShiftRollback,
    /// Aborted through the API: the weights from before the shift are back.
    ShiftAbort,
    /// Ended by a newer change (weights set, the file's weights changed).
    ShiftEnd,
    /// A `revert_after` deadline passed: the weights before that change are back.
    Revert,
    Reload,
    ReloadFailed,
    /// An endpoint's active checks turned it healthy or unhealthy.
    Health,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Weights,
        EventKind::Drain,
        EventKind::ShiftStart,
        EventKind::ShiftStep,
        EventKind::ShiftDone,
        EventKind::ShiftRollback,
        EventKind::ShiftAbort,
        EventKind::ShiftEnd,
        EventKind::Revert,
        EventKind::Reload,
        EventKind::ReloadFailed,
        EventKind::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Weights => "weights",
            EventKind::Drain => "drain",
            EventKind::ShiftStart => "shift_start",
            EventKind::ShiftStep => "shift_step",
            EventKind::ShiftDone => "shift_done",
            EventKind::ShiftRollback => "shift_rollback",
            EventKind::ShiftAbort => "shift_abort",
            EventKind::ShiftEnd => "shift_end",
            EventKind::Revert => "revert",
            EventKind::Reload => "reload",
            EventKind::ReloadFailed => "reload_failed",
            EventKind::Health => "health",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

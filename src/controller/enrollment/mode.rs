//! Whether a pass writes to DPS: managed, observe-only, or paused.

use kube::ResourceExt;

use crate::{
    api::{ManagementPolicy, PAUSED_ANNOTATION},
    controller::{Error, kinds::EnrollmentKind},
};

/// Whether the operator writes to DPS for an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    Manage,
    ObserveOnly,
    /// The `dps.iot.dev/paused: "true"` annotation.
    Paused,
}

impl WriteMode {
    /// The mode of `object`; any value of the paused annotation but `"true"` and `"false"` is an
    /// error, since the user meant something and writing on would be a guess.
    pub fn of<K: EnrollmentKind>(object: &K) -> Result<Self, Error> {
        match object.annotations().get(PAUSED_ANNOTATION).map(String::as_str) {
            Some("true") => return Ok(Self::Paused),
            None | Some("false") => {}
            Some(value) => return Err(Error::InvalidPausedAnnotation { value: value.to_owned() }),
        }
        Ok(match object.settings().management_policy {
            Some(ManagementPolicy::ObserveOnly) => Self::ObserveOnly,
            _ => Self::Manage,
        })
    }

    pub fn may_write(self) -> bool {
        self == Self::Manage
    }

    /// The reason of `Ready` when DPS holds what the spec says.
    pub fn in_sync_reason(self) -> &'static str {
        match self {
            Self::Manage => "Synced",
            Self::ObserveOnly => "ObserveOnly",
            Self::Paused => "Paused",
        }
    }

    /// Why nothing is written, for messages.
    pub fn why_not_written(self) -> &'static str {
        match self {
            Self::Manage => "",
            Self::ObserveOnly => "managementPolicy is ObserveOnly",
            Self::Paused => "the dps.iot.dev/paused annotation is \"true\"",
        }
    }
}

//! The two kinds of enrollment, and how DPS names each.

/// An individual enrollment or an enrollment group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Individual,
    Group,
}

impl Kind {
    pub fn id_name(self) -> &'static str {
        match self {
            Self::Individual => "registration id",
            Self::Group => "enrollment group id",
        }
    }

    /// The id's field in the swagger.
    pub fn id_field(self) -> &'static str {
        match self {
            Self::Individual => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    /// The swagger definition of the enrollment.
    pub fn definition(self) -> &'static str {
        match self {
            Self::Individual => "IndividualEnrollment",
            Self::Group => "EnrollmentGroup",
        }
    }

    /// How messages name it.
    pub fn what(self) -> &'static str {
        match self {
            Self::Individual => "enrollment",
            Self::Group => "enrollment group",
        }
    }
}

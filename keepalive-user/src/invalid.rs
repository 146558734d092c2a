//! What is wrong with a value someone wrote: a flag, a config key, an
//! idle-timeout rule, a `/sockets` query parameter. Its `Display` is the
//! one line shown with exit 2 (or HTTP 400); the variant says which kind of
//! wrong, for code that needs to tell.

use std::borrow::Cow;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Invalid {
    /// Not of the form expected (`expected` names it, with examples).
    #[error("`{value}` is not {expected}")]
    NotA {
        value: String,
        expected: Cow<'static, str>,
    },
    #[error("{value} is out of range ({min} to {max})")]
    OutOfRange { value: i64, min: i64, max: i64 },
    /// The right form, a value kato does not take (`why`: "negative", …).
    #[error("`{value}` is {why}")]
    Refused {
        value: String,
        why: Cow<'static, str>,
    },
    /// Not one of a fixed set of names.
    #[error("unknown {what} `{value}` (expected {expected})")]
    Unknown {
        what: &'static str,
        value: String,
        expected: Cow<'static, str>,
    },
    /// Malformed in a part: `why` says where.
    #[error("`{value}`: {why}")]
    Malformed {
        value: String,
        why: Cow<'static, str>,
    },
}

impl Invalid {
    pub fn not_a(value: impl Into<String>, expected: impl Into<Cow<'static, str>>) -> Self {
        Invalid::NotA {
            value: value.into(),
            expected: expected.into(),
        }
    }

    pub fn refused(value: impl Into<String>, why: impl Into<Cow<'static, str>>) -> Self {
        Invalid::Refused {
            value: value.into(),
            why: why.into(),
        }
    }

    pub fn unknown(
        what: &'static str,
        value: impl Into<String>,
        expected: impl Into<Cow<'static, str>>,
    ) -> Self {
        Invalid::Unknown {
            what,
            value: value.into(),
            expected: expected.into(),
        }
    }

    pub fn malformed(value: impl Into<String>, why: impl Into<Cow<'static, str>>) -> Self {
        Invalid::Malformed {
            value: value.into(),
            why: why.into(),
        }
    }
}

//! The store-level sizes a header fixes, as validated newtypes (once built, they are in range),
//! and their bounds as plain numbers.

use std::fmt;

use crate::{Error, Result};

macro_rules! pow2_newtype {
    (
        $(#[$doc:meta])*
        $name:ident, field = $field:literal, min = $min:expr, max = $max:expr,
        default = $default:expr, reason = $reason:literal
    ) => {
        $(#[$doc])*
        ///
        /// Serializes as a plain number; deserializing validates it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(into = "u64", try_from = "u64")]
        pub struct $name(u64);

        impl $name {
            /// The smallest value accepted.
            pub const MIN: $name = $name($min);
            /// The largest value accepted.
            pub const MAX: $name = $name($max);
            /// The value writers use unless told otherwise.
            pub const DEFAULT: $name = $name($default);

            /// Validates `value`: a power of two from [`Self::MIN`] to [`Self::MAX`].
            ///
            /// # Errors
            #[doc = concat!("[`Error::InvalidField`] naming the field `", $field, "`.")]
            pub fn new(value: u64) -> Result<$name> {
                if value.is_power_of_two() && ($min..=$max).contains(&value) {
                    Ok($name(value))
                } else {
                    Err(Error::InvalidField {
                        field: $field,
                        value: value.to_string(),
                        reason: $reason,
                    })
                }
            }

            /// The value, in bytes.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::DEFAULT
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = Error;
            fn try_from(value: u64) -> Result<$name> {
                $name::new(value)
            }
        }

        impl PartialEq<u64> for $name {
            fn eq(&self, other: &u64) -> bool {
                self.0 == *other
            }
        }
    };
}

pow2_newtype! {
    /// The alignment of every tensor's start in a store: a power of two from 64 to 2^30 bytes.
    ///
    /// ```
    /// use mmtensor_format::Alignment;
    /// assert_eq!(Alignment::new(4096)?.get(), 4096);
    /// assert!(Alignment::new(96).is_err());
    /// assert_eq!(Alignment::DEFAULT.get(), 4096);
    /// # Ok::<(), mmtensor_format::Error>(())
    /// ```
    Alignment, field = "alignment", min = 64, max = 1 << 30, default = 4096,
    reason = "must be a power of two from 64 to 2^30"
}

pow2_newtype! {
    /// The size of the blocks that the checksum table hashes: a power of two from 4096 to 2^30.
    ///
    /// ```
    /// use mmtensor_format::BlockSize;
    /// assert_eq!(BlockSize::new(1 << 20)?, BlockSize::DEFAULT);
    /// assert!(BlockSize::new(0).is_err());
    /// # Ok::<(), mmtensor_format::Error>(())
    /// ```
    BlockSize, field = "block_size", min = 4096, max = 1 << 30, default = 1 << 20,
    reason = "must be a power of two from 4096 to 2^30"
}

impl Alignment {
    /// Rounds `value` up to a multiple of this alignment; `None` on overflow.
    pub const fn align_up(self, value: u64) -> Option<u64> {
        // A power of two, so the mask is exact and `self.0 - 1` cannot underflow.
        match value.checked_add(self.0 - 1) {
            Some(v) => Some(v & !(self.0 - 1)),
            None => None,
        }
    }

    /// True when `offset` is a multiple of this alignment.
    pub const fn is_aligned(self, offset: u64) -> bool {
        offset & (self.0 - 1) == 0
    }
}

/// Smallest alignment accepted ([`Alignment::MIN`] as a number).
pub const MIN_ALIGNMENT: u64 = Alignment::MIN.get();
/// Largest alignment accepted (1 GiB; [`Alignment::MAX`] as a number).
pub const MAX_ALIGNMENT: u64 = Alignment::MAX.get();
/// Default alignment: one 4 KiB page ([`Alignment::DEFAULT`] as a number).
pub const DEFAULT_ALIGNMENT: u64 = Alignment::DEFAULT.get();
/// Smallest checksum block size accepted ([`BlockSize::MIN`] as a number).
pub const MIN_BLOCK_SIZE: u64 = BlockSize::MIN.get();
/// Largest checksum block size accepted (1 GiB; [`BlockSize::MAX`] as a number).
pub const MAX_BLOCK_SIZE: u64 = BlockSize::MAX.get();
/// Default checksum block size: 1 MiB ([`BlockSize::DEFAULT`] as a number).
pub const DEFAULT_BLOCK_SIZE: u64 = BlockSize::DEFAULT.get();

/// Rounds `value` up to a multiple of `alignment`; `None` on overflow. Same as
/// [`Alignment::align_up`].
pub fn align_up(value: u64, alignment: Alignment) -> Option<u64> {
    alignment.align_up(value)
}

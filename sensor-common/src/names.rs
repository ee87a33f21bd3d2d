//! One mechanism for every enum that crosses the kernel/user boundary or reaches a user:
//! [`named_enum!`] declares the enum with its wire value and its stable name, and derives the
//! rest from that one list: `ALL`, `COUNT`, `name()`, `from_u8()` (always `Option`: a byte from
//! the kernel or a file is never trusted), `Display`, `FromStr` (so clap and serde parse
//! flags and settings directly) and, with the `user` feature, serde by name.
//!
//! A `macro_rules!` rather than a derive crate: `name` and `from_u8` stay `const fn` (the
//! kernel calls them), the parse error lists the valid names, and the BPF build pulls in no
//! proc-macro.

/// A name that is not one of an enum's names; says which were expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// What was being parsed, e.g. "severity".
    pub what: &'static str,
    /// Every valid name, in declaration order.
    pub expected: &'static [&'static str],
}

impl core::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "not a {}; expected one of: ", self.what)?;
        for (i, name) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownName {}

/// Declare a `#[repr(u8)]` enum whose variants carry a wire value and a stable name. The
/// values must be consecutive, in declaration order (checked at compile time):
///
/// ```ignore
/// named_enum! {
///     /// Doc.
///     pub enum Role ("role") {
///         /// Doc.
///         Client = 0 => "client",
///         Server = 1 => "server",
///     }
/// }
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; $name::COUNT] = [$($name::$variant),+];
            /// How many variants there are.
            pub const COUNT: usize = [$($label),+].len();
            /// Every name, in declaration order.
            pub const NAMES: [&'static str; $name::COUNT] = [$($label),+];

            /// The stable name used in findings, metric labels, flags and settings.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }

            /// The variant with this wire value, if any.
            ///
            /// One range check, no branch per variant: in the kernel a `match` here becomes a
            /// chain of compares that hands the verifier one state per variant.
            #[inline(always)]
            pub const fn from_u8(value: u8) -> Option<$name> {
                let first = $name::ALL[0] as u8;
                if value.wrapping_sub(first) < $name::COUNT as u8 {
                    // SAFETY: `repr(u8)`, and the values are `first..first + COUNT` without a
                    // gap (asserted below at compile time), so `value` is a discriminant.
                    Some(unsafe { core::mem::transmute::<u8, $name>(value) })
                } else {
                    None
                }
            }
        }

        // `from_u8` relies on this: wire values one after another, in declaration order.
        const _: () = {
            assert!($name::COUNT <= u8::MAX as usize, "named_enum! values are one byte");
            let mut i = 0;
            while i < $name::COUNT {
                assert!(
                    $name::ALL[i] as u8 as usize == $name::ALL[0] as u8 as usize + i,
                    "named_enum! values must be consecutive"
                );
                i += 1;
            }
        };

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl core::str::FromStr for $name {
            type Err = $crate::names::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $label => Ok($name::$variant), )+
                    _ => Err($crate::names::UnknownName { what: $what, expected: &$name::NAMES }),
                }
            }
        }

        $crate::__named_enum_serde!($name);
    };
}

/// serde by name and a JSON Schema of the names, with the `user` feature only (the kernel
/// has neither).
#[cfg(feature = "user")]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_serde {
    ($name:ident) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> alloc::borrow::Cow<'static, str> {
                alloc::borrow::Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": $name::NAMES })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        write!(f, "one of {:?}", $name::NAMES)
                    }
                    // Called for borrowed and transient strings alike.
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(Name)
            }
        }
    };
}

#[cfg(not(feature = "user"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_serde {
    ($name:ident) => {};
}

#[cfg(test)]
mod tests {
    use core::str::FromStr;

    crate::named_enum! {
        /// Test enum.
        pub enum Colour ("colour") {
            Red = 3 => "red",
            Green = 4 => "green",
        }
    }

    #[test]
    fn names_values_and_parsing_come_from_one_list() {
        assert_eq!(Colour::COUNT, 2);
        assert_eq!(Colour::ALL, [Colour::Red, Colour::Green]);
        assert_eq!(Colour::from_u8(4), Some(Colour::Green));
        assert_eq!(Colour::from_u8(0), None);
        assert_eq!(Colour::from_u8(2), None);
        assert_eq!(Colour::from_u8(5), None);
        assert_eq!(Colour::from_u8(255), None);
        for c in Colour::ALL {
            assert_eq!(Colour::from_str(c.name()), Ok(c));
            assert_eq!(Colour::from_u8(c as u8), Some(c));
        }
        let err = Colour::from_str("blue").unwrap_err();
        assert_eq!(std::format!("{err}"), "not a colour; expected one of: red, green");
    }
}

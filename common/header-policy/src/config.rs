//! The policy as written in YAML or JSON: serde structs that mirror the
//! file (unknown fields are errors). [`crate::validate`] turns them into a
//! [`crate::Policy`].
//!
//! Three small shapes need their own deserializers: header maps keep the
//! order they were written in ([`FieldMap`]), conditions take one value or
//! a list ([`OneOrMany`]), and settings that a route may switch off take
//! `false`, `true` (the recommended value) or a value ([`Switch`]).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One `header_policy:` block: the edge's default, a route's, or the
/// filter's plugin configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Rules applied to the request before it goes upstream, in order.
    #[serde(default)]
    pub request: Vec<RawRule>,
    /// Rules applied to the response before it goes to the visitor, in order.
    #[serde(default)]
    pub response: Vec<RawRule>,
    /// Headers removed before any rule runs.
    #[serde(default)]
    pub strip: RawStrip,
    /// Headers added to responses that do not carry them already.
    pub security_headers: Option<RawSecurityHeaders>,
    /// Cross-origin resource sharing, preflights answered locally.
    pub cors: Option<Switch<RawCors>>,
}

/// One rule: a condition and what to do when it holds. Within a rule the
/// actions run in the order remove, rename, set, append.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub when: Option<RawWhen>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: FieldMap,
    #[serde(default)]
    pub set: FieldMap,
    #[serde(default)]
    pub append: FieldMap,
}

/// Conditions of a rule; every one given must hold. Each takes one value or
/// a list of alternatives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// `app.example.com` or `*.example.com` (any subdomain, not the apex).
    pub host: Option<OneOrMany>,
    /// Path prefix on whole segments: `/api` matches `/api` and `/api/x`.
    pub path: Option<OneOrMany>,
    /// Request methods, e.g. `GET`.
    pub method: Option<OneOrMany>,
    /// The edge route's name (`xds.route_name` in Envoy).
    pub route: Option<OneOrMany>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStrip {
    /// Removed from requests: names, or prefixes ending in `*`.
    #[serde(default)]
    pub request: Vec<String>,
    /// Removed from responses: names, or prefixes ending in `*`.
    #[serde(default)]
    pub response: Vec<String>,
}

/// Each header: absent (inherit / none), `false` (not sent), `true` (the
/// recommended value) or a value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    pub hsts: Option<Switch<RawHsts>>,
    pub content_type_options: Option<Switch<String>>,
    pub referrer_policy: Option<Switch<String>>,
    pub frame_options: Option<Switch<String>>,
    pub frame_ancestors: Option<Switch<Vec<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// A duration (`365d`, `1y`) or seconds; default one year.
    pub max_age: Option<Seconds>,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// `https://app.example.com`, `https://*.example.com`, or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Default `[GET, HEAD, POST]`.
    pub allow_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<Seconds>,
}

/// `false`, `true` or a value, for settings a route may switch off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch<T> {
    Off,
    /// `true`: the recommended value.
    Recommended,
    On(T),
}

/// The one shape a [`Switch`]'s value is written in (serde would
/// otherwise also read a struct from a list).
pub trait SwitchValue {
    const SHAPE: Shape;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Map,
    List,
    Text,
}

impl SwitchValue for RawHsts {
    const SHAPE: Shape = Shape::Map;
}
impl SwitchValue for RawCors {
    const SHAPE: Shape = Shape::Map;
}
impl SwitchValue for String {
    const SHAPE: Shape = Shape::Text;
}
impl SwitchValue for Vec<String> {
    const SHAPE: Shape = Shape::List;
}

impl<'de, T: Deserialize<'de> + SwitchValue> Deserialize<'de> for Switch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SwitchVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + SwitchValue> SwitchVisitor<T> {
            fn check<E: de::Error>(&self, got: Shape, unexp: de::Unexpected) -> Result<(), E> {
                if got == T::SHAPE {
                    Ok(())
                } else {
                    Err(E::invalid_type(unexp, self))
                }
            }
        }

        impl<'de, T: Deserialize<'de> + SwitchValue> Visitor<'de> for SwitchVisitor<T> {
            type Value = Switch<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                let value = match T::SHAPE {
                    Shape::Map => "a map",
                    Shape::List => "a list",
                    Shape::Text => "a string",
                };
                write!(f, "false, true, or {value}")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v { Switch::Recommended } else { Switch::Off })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                self.check(Shape::Text, de::Unexpected::Str(v))?;
                T::deserialize(v.into_deserializer()).map(Switch::On)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                self.check(Shape::List, de::Unexpected::Seq)?;
                T::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Switch::On)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                self.check(Shape::Map, de::Unexpected::Map)?;
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Switch::On)
            }
        }

        deserializer.deserialize_any(SwitchVisitor(PhantomData))
    }
}

/// One string or a list of strings; `single` remembers which, so problems
/// name `when.host` or `when.host[1]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OneOrMany {
    pub values: Vec<String>,
    pub single: bool,
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany {
                    values: vec![v.to_owned()],
                    single: true,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    values.push(v);
                }
                Ok(OneOrMany {
                    values,
                    single: false,
                })
            }
        }

        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// A map from header name to a string, in the order written (duplicate
/// keys are kept, so validation can report them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for FieldMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldMapVisitor;

        impl<'de> Visitor<'de> for FieldMapVisitor {
            type Value = FieldMap;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of header names to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, ScalarString>()? {
                    entries.push((k, v.0));
                }
                Ok(FieldMap(entries))
            }
        }

        deserializer.deserialize_map(FieldMapVisitor)
    }
}

/// A string, also accepting a number (`X-Version: 2` in YAML).
struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarString;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ScalarString(v.to_string()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A duration written as text (`10m`, `365d`) or a number of seconds,
/// kept as written until validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seconds {
    Text(String),
    Number(u64),
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;

        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration (e.g. 10m, 365d) or a number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Seconds::Text(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Seconds::Number(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(Seconds::Number)
                    .map_err(|_| E::custom("a duration must not be negative"))
            }

            /// Whole numbers written as floats: JSON from a protobuf
            /// `Struct` (Istio's `pluginConfig`) may carry `600.0`.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64 {
                    Ok(Seconds::Number(v as u64))
                } else {
                    Err(E::custom(
                        "a number of seconds must be whole and not negative",
                    ))
                }
            }
        }

        deserializer.deserialize_any(SecondsVisitor)
    }
}

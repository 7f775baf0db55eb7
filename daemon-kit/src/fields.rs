//! A configuration as its settings, read through serde: each field a
//! `(key, text)` pair in declaration order, so a reload can name what
//! changed without each daemon spelling out a comparison per setting.
//!
//! Rules: the value must be a struct; a field that is itself a struct
//! (the broker's `limits`, the shared settings) contributes its own fields
//! in its place, so keys are the leaves' names (a field's serde name, which
//! the daemons make their config-file keys). Texts: numbers and booleans as
//! written, strings as they are (addresses and ranges serialize as their
//! display text), a list joined by commas, nothing as `none`. Maps, tuples
//! and enums with data are not settings and are refused.

use std::fmt;

use serde::ser::{self, Impossible, Serialize, SerializeSeq, SerializeStruct};

/// Why a value could not be read as settings.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// The settings of `value`, in order.
pub fn fields<T: Serialize + ?Sized>(value: &T) -> Result<Vec<(&'static str, String)>, Error> {
    match value.serialize(Text)? {
        Shown::Fields(fields) => Ok(fields),
        Shown::Text(_) => Err(Error("settings must be a struct".into())),
    }
}

/// What one value came to.
enum Shown {
    Text(String),
    Fields(Vec<(&'static str, String)>),
}

impl Shown {
    fn text(self) -> Result<String, Error> {
        match self {
            Shown::Text(t) => Ok(t),
            Shown::Fields(_) => Err(Error("a struct inside a list".into())),
        }
    }
}

/// Serializes one value into its text, or a struct into its fields.
struct Text;

macro_rules! shown {
    ($($method:ident: $t:ty),*) => {
        $(fn $method(self, v: $t) -> Result<Shown, Error> {
            Ok(Shown::Text(v.to_string()))
        })*
    };
}

fn unsupported(what: &str) -> Error {
    Error(format!("{what} is not a setting"))
}

impl ser::Serializer for Text {
    type Ok = Shown;
    type Error = Error;
    type SerializeSeq = List;
    type SerializeTuple = Impossible<Shown, Error>;
    type SerializeTupleStruct = Impossible<Shown, Error>;
    type SerializeTupleVariant = Impossible<Shown, Error>;
    type SerializeMap = Impossible<Shown, Error>;
    type SerializeStruct = Fields;
    type SerializeStructVariant = Impossible<Shown, Error>;

    shown!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
        serialize_str: &str);

    fn serialize_bytes(self, _: &[u8]) -> Result<Shown, Error> {
        Err(unsupported("bytes"))
    }
    fn serialize_none(self) -> Result<Shown, Error> {
        Ok(Shown::Text("none".into()))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Shown, Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Shown, Error> {
        Ok(Shown::Text(String::new()))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Shown, Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        v: &'static str,
    ) -> Result<Shown, Error> {
        Ok(Shown::Text(v.into()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Shown, Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Shown, Error> {
        Err(unsupported("an enum with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<List, Error> {
        Ok(List(Vec::new()))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(unsupported("a tuple"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(unsupported("an enum with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(unsupported("a map"))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields, Error> {
        Ok(Fields(Vec::new()))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(unsupported("an enum with data"))
    }
}

/// A list being shown: its items' texts.
struct List(Vec<String>);

impl SerializeSeq for List {
    type Ok = Shown;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.0.push(v.serialize(Text)?.text()?);
        Ok(())
    }

    fn end(self) -> Result<Shown, Error> {
        Ok(Shown::Text(self.0.join(",")))
    }
}

/// A struct being read: its fields, a nested struct's in its place.
struct Fields(Vec<(&'static str, String)>);

impl SerializeStruct for Fields {
    type Ok = Shown;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Error> {
        match v.serialize(Text)? {
            Shown::Text(t) => self.0.push((key, t)),
            Shown::Fields(inner) => self.0.extend(inner),
        }
        Ok(())
    }

    fn end(self) -> Result<Shown, Error> {
        Ok(Shown::Fields(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use serde::Serialize;

    #[derive(Serialize)]
    struct Limits {
        max_relays: u32,
        rate: f64,
    }

    #[derive(Serialize)]
    struct Config {
        listen: SocketAddr,
        limits: Limits,
        #[serde(rename = "public_ip")]
        ips: Vec<std::net::IpAddr>,
        secret_file: Option<PathBuf>,
        #[serde(skip)]
        _derived: bool,
        log: String,
        on: bool,
    }

    #[test]
    fn a_struct_is_its_fields_in_order_nested_ones_in_place() {
        let c = Config {
            listen: "192.0.2.1:7".parse().unwrap(),
            limits: Limits {
                max_relays: 10,
                rate: 1.5,
            },
            ips: vec![
                "198.51.100.1".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            ],
            secret_file: None,
            _derived: true,
            log: "info".into(),
            on: true,
        };
        let got = fields(&c).unwrap();
        let want = [
            ("listen", "192.0.2.1:7"),
            ("max_relays", "10"),
            ("rate", "1.5"),
            ("public_ip", "198.51.100.1,198.51.100.2"),
            ("secret_file", "none"),
            ("log", "info"),
            ("on", "true"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn what_is_no_setting_is_refused() {
        assert!(fields(&5).is_err(), "not a struct");
        #[derive(Serialize)]
        struct M {
            m: HashMap<String, u32>,
        }
        assert!(fields(&M { m: HashMap::new() }).is_err());
    }
}

//! `RawJson`: message data kept as the exact JSON text the publisher sent. It is parsed once
//! for validity and then carried to subscribers without being decoded into a tree.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Debug)]
pub struct RawJson(pub Box<RawValue>);

impl Type for RawJson {
    const IS_REQUIRED: bool = true;
    type RawValueType = Box<RawValue>;
    type RawElementValueType = Box<RawValue>;

    fn name() -> Cow<'static, str> {
        "any".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::ANY))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for RawJson {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        let value = value.ok_or_else(ParseError::expected_input)?;
        RawValue::from_string(value.to_string()).map(RawJson).map_err(ParseError::custom)
    }
}

impl ToJSON for RawJson {
    fn to_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.0.get()).ok()
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(RawJson)
    }
}

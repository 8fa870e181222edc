//! The proto3 JSON mapping (what grpcurl prints): lowerCamelCase names,
//! enums by name, 64-bit integers as strings, bytes as base64, Timestamp as
//! RFC 3339 and Duration as "1.5s", `Any` with its `@type`.
//!
//! Messages are transcoded through their descriptors (prost-reflect), the
//! same descriptors server reflection serves, so the JSON always follows
//! the proto and no mirror structs exist: a prost message is encoded to
//! protobuf and read back as a dynamic message to print it, and a JSON body
//! is read as a dynamic message and decoded into the prost type.

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use tonic::Status;

use crate::api::error::{ApiError, Violation};

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("cannot load the proto descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("cannot decode tonic-types' descriptors: {0}")]
    Decode(String),
    #[error("message type {0} is not among the proto descriptors")]
    UnknownType(&'static str),
}

/// A prost message and the full protobuf name of its type.
pub trait Named: Message + Default {
    const NAME: &'static str;
}

macro_rules! named {
    ($($ty:path => $name:literal),* $(,)?) => {
        $(impl Named for $ty { const NAME: &'static str = $name; })*
    };
}

use crate::proto as p;
named! {
    p::SubmitRequest => "jobd.v1.SubmitRequest",
    p::SubmitResponse => "jobd.v1.SubmitResponse",
    p::SubmitBatchRequest => "jobd.v1.SubmitBatchRequest",
    p::SubmitBatchResponse => "jobd.v1.SubmitBatchResponse",
    p::GetStatusResponse => "jobd.v1.GetStatusResponse",
    p::CancelResponse => "jobd.v1.CancelResponse",
    p::ListJobsRequest => "jobd.v1.ListJobsRequest",
    p::ListJobsResponse => "jobd.v1.ListJobsResponse",
    p::JobEvent => "jobd.v1.JobEvent",
    p::LogLine => "jobd.v1.LogLine",
    p::GetLogsResponse => "jobd.v1.GetLogsResponse",
    p::GetJobGraphResponse => "jobd.v1.GetJobGraphResponse",
    p::WatchJobsRequest => "jobd.v1.WatchJobsRequest",
    p::WatchJobsResponse => "jobd.v1.WatchJobsResponse",
    p::RetryJobsRequest => "jobd.v1.RetryJobsRequest",
    p::RetryJobsResponse => "jobd.v1.RetryJobsResponse",
    p::ListKindsRequest => "jobd.v1.ListKindsRequest",
    p::ListKindsResponse => "jobd.v1.ListKindsResponse",
    p::PauseKindResponse => "jobd.v1.PauseKindResponse",
    p::ResumeKindResponse => "jobd.v1.ResumeKindResponse",
    p::ListSchedulesRequest => "jobd.v1.ListSchedulesRequest",
    p::ListSchedulesResponse => "jobd.v1.ListSchedulesResponse",
    p::TriggerScheduleResponse => "jobd.v1.TriggerScheduleResponse",
    p::PauseScheduleResponse => "jobd.v1.PauseScheduleResponse",
    p::ResumeScheduleResponse => "jobd.v1.ResumeScheduleResponse",
    p::CreateScheduleRequest => "jobd.v1.CreateScheduleRequest",
    p::CreateScheduleResponse => "jobd.v1.CreateScheduleResponse",
    p::UpdateScheduleRequest => "jobd.v1.UpdateScheduleRequest",
    p::UpdateScheduleResponse => "jobd.v1.UpdateScheduleResponse",
    p::DeleteScheduleResponse => "jobd.v1.DeleteScheduleResponse",
    p::ListWorkersRequest => "jobd.v1.ListWorkersRequest",
    p::ListWorkersResponse => "jobd.v1.ListWorkersResponse",
    tonic_types::pb::Status => "google.rpc.Status",
}

/// The descriptors of jobd's protos, the well-known types and
/// google.rpc's error details (so `Any` details print with their fields).
#[derive(Clone, Debug)]
pub struct Json {
    pool: DescriptorPool,
}

impl Json {
    pub fn new() -> Result<Json, JsonError> {
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)?;
        // tonic-types names its files without their directory
        // ("status.proto"), so google.rpc.Status, which jobd's proto
        // imports as "google/rpc/status.proto", would be defined twice:
        // only files whose types are not there yet are added.
        let extra = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .map_err(|e| JsonError::Decode(e.to_string()))?;
        for file in extra.file {
            let package = file.package().to_string();
            let known = file.message_type.iter().any(|m| {
                pool.get_message_by_name(&format!("{package}.{}", m.name()))
                    .is_some()
            });
            if !known {
                pool.add_file_descriptor_proto(file)?;
            }
        }
        let json = Json { pool };
        // Every type the routes use must be there: fail at start, not on a request.
        for name in [
            <p::SubmitRequest as Named>::NAME,
            <p::ListJobsRequest as Named>::NAME,
            <p::JobEvent as Named>::NAME,
            <tonic_types::pb::Status as Named>::NAME,
            "google.rpc.BadRequest",
        ] {
            json.descriptor(name)?;
        }
        Ok(json)
    }

    fn descriptor(&self, name: &'static str) -> Result<MessageDescriptor, JsonError> {
        self.pool
            .get_message_by_name(name)
            .ok_or(JsonError::UnknownType(name))
    }

    /// `msg` as JSON. Fails only if the descriptors do not match the
    /// generated code (a build error, not a client's).
    pub fn to_vec<M: Named>(&self, msg: &M) -> Result<Vec<u8>, Status> {
        self.to_vec_with(msg, &SerializeOptions::new())
    }

    fn to_vec_with<M: Named>(
        &self,
        msg: &M,
        options: &SerializeOptions,
    ) -> Result<Vec<u8>, Status> {
        let internal = |e: String| Status::from(ApiError::Internal(format!("JSON encoding: {e}")));
        let desc = self
            .descriptor(M::NAME)
            .map_err(|e| internal(e.to_string()))?;
        let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
            .map_err(|e| internal(e.to_string()))?;
        let mut out = serde_json::Serializer::new(Vec::new());
        dynamic
            .serialize_with_options(&mut out, options)
            .map_err(|e| internal(e.to_string()))?;
        Ok(out.into_inner())
    }

    /// A request body as `M`; unknown fields are refused, so a misspelt
    /// field is an error rather than silently ignored.
    pub fn from_slice<M: Named>(&self, body: &[u8]) -> Result<M, Status> {
        let desc = self
            .descriptor(M::NAME)
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let mut de = serde_json::Deserializer::from_slice(body);
        let dynamic = DynamicMessage::deserialize_with_options(
            desc,
            &mut de,
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            payload_problem(M::NAME, body)
                .unwrap_or_else(|| bad_body(format!("not a valid {} in JSON: {e}", M::NAME)))
        })?;
        M::decode(dynamic.encode_to_vec().as_slice())
            .map_err(|e| Status::from(ApiError::Internal(format!("JSON decoding: {e}"))))
    }

    /// A query string as `M`, in grpc-gateway's manner: `name=value` sets a
    /// field (proto or JSON name); a repeated field takes the name again;
    /// `label=k=v` (or `labels=k=v`) adds to the `labels` map; an enum takes
    /// its name with or without its prefix, in any case (`state=failed`).
    pub fn from_query<M: Named>(&self, query: &str) -> Result<M, Status> {
        let desc = self
            .descriptor(M::NAME)
            .map_err(|e| Status::from(ApiError::Internal(e.to_string())))?;
        let mut obj = serde_json::Map::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let name = if key == "label" { "labels" } else { &key };
            let field = desc
                .get_field_by_name(name)
                .or_else(|| desc.get_field_by_json_name(name))
                .ok_or_else(|| bad_query(&key, "unknown query parameter"))?;
            let json_name = field.json_name().to_string();
            if field.is_map() {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| bad_query(&key, "expected key=value"))?;
                let map = obj
                    .entry(json_name)
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let Some(m) = map.as_object_mut() {
                    m.insert(k.to_string(), serde_json::Value::String(v.to_string()));
                }
                continue;
            }
            let v = match field.kind() {
                Kind::Enum(e) => {
                    let upper = value.to_ascii_uppercase();
                    let prefix = e
                        .default_value()
                        .name()
                        .strip_suffix("UNSPECIFIED")
                        .unwrap_or_default()
                        .to_string();
                    let found = e
                        .get_value_by_name(&upper)
                        .or_else(|| e.get_value_by_name(&format!("{prefix}{upper}")))
                        .ok_or_else(|| {
                            let names: Vec<_> = e.values().map(|v| v.name().to_string()).collect();
                            bad_query(&key, &format!("expected one of {}", names.join(", ")))
                        })?;
                    serde_json::Value::String(found.name().to_string())
                }
                Kind::Bool => match value.as_ref() {
                    "true" | "1" | "" => serde_json::Value::Bool(true),
                    "false" | "0" => serde_json::Value::Bool(false),
                    _ => return Err(bad_query(&key, "expected true or false")),
                },
                // Numbers as strings: the JSON mapping accepts them, and
                // the range check stays with the decoder.
                _ => serde_json::Value::String(value.to_string()),
            };
            if field.is_list() {
                let list = obj
                    .entry(json_name)
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let Some(a) = list.as_array_mut() {
                    a.push(v);
                }
            } else if obj.insert(json_name, v).is_some() {
                return Err(bad_query(&key, "given more than once"));
            }
        }
        let dynamic = DynamicMessage::deserialize(desc, serde_json::Value::Object(obj))
            .map_err(|e| bad_body(format!("invalid query parameters: {e}")))?;
        M::decode(dynamic.encode_to_vec().as_slice())
            .map_err(|e| Status::from(ApiError::Internal(format!("query decoding: {e}"))))
    }

    /// A status as its `google.rpc.Status` JSON: `{"code", "codeName",
    /// "message", "details"}`, the details (BadRequest, ErrorInfo,
    /// RetryInfo, ...) with their `@type` and fields. `details` is always
    /// there, empty or not; `codeName` (the code's name, e.g.
    /// `INVALID_ARGUMENT`) is added after `code` for people and scripts
    /// that do not know the numbers.
    pub fn status(&self, status: &Status) -> Vec<u8> {
        with_code_name(self.status_json(status), status.code())
    }

    fn status_json(&self, status: &Status) -> Vec<u8> {
        let plain = || tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: vec![],
        };
        let rich = (!status.details().is_empty())
            .then(|| tonic_types::pb::Status::decode(status.details()).ok())
            .flatten();
        // With no details, defaults are printed so `details` is there,
        // empty (fields in order: code, message, details); with some, they
        // are not, so the details print as grpcurl prints them.
        let s = rich.filter(|s| !s.details.is_empty()).unwrap_or_else(plain);
        let options = SerializeOptions::new().skip_default_fields(!s.details.is_empty());
        self.to_vec_with(&s, &options).ok().unwrap_or_else(|| {
            serde_json::to_vec(&serde_json::json!({
                "code": status.code() as i32,
                "message": status.message(),
                "details": [],
            }))
            .unwrap_or_default()
        })
    }
}

/// `{"code":N,…}` with `"codeName":"NAME"` put right after the code, so
/// the fields read in order: code, codeName, message, details.
fn with_code_name(json: Vec<u8>, code: tonic::Code) -> Vec<u8> {
    let name = crate::transport::grpc_metrics::code_name(code);
    let prefix = b"{\"code\":";
    let end = json
        .strip_prefix(prefix)
        .and_then(|rest| rest.iter().position(|b| !b.is_ascii_digit()))
        .map(|digits| prefix.len() + digits);
    match end {
        Some(at) if at > prefix.len() => {
            let field = format!(",\"codeName\":\"{name}\"");
            let mut out = Vec::with_capacity(json.len() + field.len());
            out.extend_from_slice(&json[..at]);
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(&json[at..]);
            out
        }
        _ => {
            let mut v: serde_json::Value =
                serde_json::from_slice(&json).unwrap_or_else(|_| serde_json::json!({}));
            if let Some(m) = v.as_object_mut() {
                m.insert("codeName".into(), name.into());
            }
            serde_json::to_vec(&v).unwrap_or(json)
        }
    }
}

/// Why a Submit (or SubmitBatch) body was refused, when the reason is a
/// `payload` that is not base64 (text sent as is, the usual first try):
/// the field named, and the route that takes raw bytes. `None` when the
/// payloads are fine (the body is wrong elsewhere).
fn payload_problem(message: &str, body: &[u8]) -> Option<Status> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let requests: Vec<(String, &serde_json::Value)> = match message {
        "jobd.v1.SubmitRequest" => vec![(String::new(), &v)],
        "jobd.v1.SubmitBatchRequest" => v
            .get("requests")?
            .as_array()?
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("requests[{i}]."), r))
            .collect(),
        _ => return None,
    };
    let violations: Vec<Violation> = requests
        .into_iter()
        .filter_map(|(prefix, r)| {
            let payload = r.get("payload")?;
            if payload.as_str().is_some_and(is_base64) || payload.is_null() {
                return None;
            }
            let kind = r
                .get("kind")
                .and_then(|k| k.as_str())
                .filter(|k| crate::job::is_valid_kind(k))
                .unwrap_or("{kind}");
            let mut shown: String = payload.to_string().chars().take(40).collect();
            if shown.len() < payload.to_string().len() {
                shown.push('…');
            }
            Some(Violation {
                field: format!("{prefix}payload"),
                description: format!(
                    "must be base64 (JSON carries bytes as base64), got {shown}: encode it \
                     (`printf %s 'text' | base64`), or POST the raw bytes as the body of \
                     /v1/kinds/{kind}/jobs"
                ),
            })
        })
        .collect();
    (!violations.is_empty()).then(|| ApiError::InvalidArgument(violations).into())
}

/// Whether `s` is base64 as the proto3 JSON mapping takes it: the standard
/// or URL-safe alphabet, padded or not.
fn is_base64(s: &str) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [base64::alphabet::STANDARD, base64::alphabet::URL_SAFE]
        .iter()
        .any(|a| GeneralPurpose::new(a, config).decode(s).is_ok())
}

/// INVALID_ARGUMENT for a body that is not the request's JSON.
pub fn bad_body(description: String) -> Status {
    ApiError::InvalidArgument(vec![Violation {
        field: "body".into(),
        description,
    }])
    .into()
}

/// A query parameter refused: 400 with a BadRequest naming `query.{key}`.
pub fn bad_query(key: &str, description: &str) -> Status {
    ApiError::InvalidArgument(vec![Violation {
        field: format!("query.{key}"),
        description: description.into(),
    }])
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_types_map_as_grpcurl_prints_them() {
        let json = Json::new().unwrap();
        let job = p::Job {
            id: "x".into(),
            state: p::JobState::Succeeded as i32,
            payload_size: 5,
            result: b"hi".to_vec(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000,
            }),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        let out = json
            .to_vec(&p::GetStatusResponse {
                job: Some(job),
                payload_preview: b"hi".to_vec(),
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["payloadPreview"], "aGk=", "bytes are base64");
        let j = &v["job"];
        assert_eq!(j["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(j["payloadSize"], "5");
        assert_eq!(j["result"], "aGk=");
        assert_eq!(j["createdAt"], "2023-11-14T22:13:20.500Z");
        assert_eq!(j["timeout"], "1.500s");
    }

    #[test]
    fn query_maps_labels_enums_and_numbers() {
        let json = Json::new().unwrap();
        let q: p::ListJobsRequest = json
            .from_query("state=failed&kind=echo&label=a=b&label=c=d%3De&page_size=5")
            .unwrap();
        assert_eq!(q.state, p::JobState::Failed as i32);
        assert_eq!(q.kind, "echo");
        assert_eq!(q.page_size, 5);
        assert_eq!(q.labels.get("c").map(String::as_str), Some("d=e"));
        for bad in [
            "nope=1",
            "state=bogus",
            "page_size=-1",
            "label=novalue",
            "kind=a&kind=b",
        ] {
            let e = json.from_query::<p::ListJobsRequest>(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn a_payload_that_is_not_base64_is_named_with_the_raw_route() {
        let json = Json::new().unwrap();
        let e = json
            .from_slice::<p::SubmitRequest>(br#"{"kind":"echo","payload":"hello world"}"#)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(
            m.contains("payload: must be base64") && m.contains("/v1/kinds/echo/jobs"),
            "{m}"
        );
        assert!(!m.contains("Invalid symbol"), "{m}");
        let e = json
            .from_slice::<p::SubmitBatchRequest>(
                br#"{"requests":[{"kind":"echo","payload":"aGk="},{"kind":"echo","payload":"a b"}]}"#,
            )
            .unwrap_err();
        assert!(
            e.message().contains("requests[1].payload"),
            "{}",
            e.message()
        );
        assert!(!e.message().contains("requests[0]"), "{}", e.message());
        // Base64 in either alphabet, padded or not, is taken.
        for ok in ["aGk=", "aGk", "-_8", ""] {
            let body = format!(r#"{{"kind":"echo","payload":"{ok}"}}"#);
            json.from_slice::<p::SubmitRequest>(body.as_bytes())
                .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
    }

    #[test]
    fn status_json_carries_bad_request_details() {
        let json = Json::new().unwrap();
        let status: Status = ApiError::invalid("kind", "not configured").into();
        let v: serde_json::Value = serde_json::from_slice(&json.status(&status)).unwrap();
        assert_eq!(v["code"], 3);
        assert_eq!(v["codeName"], "INVALID_ARGUMENT");
        assert_eq!(
            v["details"][0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(v["details"][0]["fieldViolations"][0]["field"], "kind");
        let plain = json.status(&Status::not_found("gone"));
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            r#"{"code":5,"codeName":"NOT_FOUND","message":"gone","details":[]}"#
        );
    }
}

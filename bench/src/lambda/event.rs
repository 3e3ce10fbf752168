//! What API Gateway (REST API, Lambda proxy integration) hands the function, and what
//! it makes of the function's answer. The event has the shape of `events/vend.json`
//! (a recorded REST event); resources are the template's: `/`, `/activation`, `/health`
//! and `/{proxy+}` for every other path (`/registrations` among them).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Map, Value};

/// An HTTP request as the stage received it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub source_ip: String,
    pub request_id: String,
    pub epoch_ms: u64,
}

/// The HTTP answer API Gateway builds from the function's proxy result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

const STAGE: &str = "prod";
const API_ID: &str = "benchstage";

/// The template's resource for `path`, and the `{proxy+}` parameter when it is that one.
fn resource(path: &str) -> (&'static str, Option<String>) {
    match path {
        "/" => ("/", None),
        "/activation" => ("/activation", None),
        "/health" => ("/health", None),
        other => ("/{proxy+}", Some(other.trim_start_matches('/').to_owned())),
    }
}

/// The API method a request reaches (resource, method), as the template defines them:
/// GET and ANY on `/`, `/activation` and `/health`, ANY on `/{proxy+}`. API Gateway
/// applies the stage's throttle settings (`MethodSettings` on `/*`, `*`) to each
/// method on its own, not to the stage as a whole.
pub fn api_method(path: &str, method: &str) -> (&'static str, &'static str) {
    let (resource, _) = resource(path);
    let verb = if resource != "/{proxy+}" && method == "GET" {
        "GET"
    } else {
        "ANY"
    };
    (resource, verb)
}

/// `{name: last value}` and `{name: [values]}`, or nulls when there are none, as API
/// Gateway fills `headers`/`multiValueHeaders` and the query string's pair.
fn single_and_multi(pairs: &[(String, String)]) -> (Value, Value) {
    if pairs.is_empty() {
        return (Value::Null, Value::Null);
    }
    let mut multi: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in pairs {
        multi.entry(name).or_default().push(value);
    }
    let single: Map<String, Value> = multi
        .iter()
        .map(|(name, values)| ((*name).to_owned(), json!(values.last())))
        .collect();
    (Value::Object(single), json!(multi))
}

/// The REST proxy event for `request`.
pub fn rest_proxy_event(request: &Incoming) -> Value {
    let (resource, proxy) = resource(&request.path);
    let query: Vec<(String, String)> = request
        .query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut headers = request.headers.clone();
    headers.push(("X-Forwarded-For".into(), request.source_ip.clone()));
    let (headers, multi_headers) = single_and_multi(&headers);
    let (query, multi_query) = single_and_multi(&query);
    let (body, base64) = match std::str::from_utf8(&request.body) {
        _ if request.body.is_empty() => (Value::Null, false),
        Ok(text) => (json!(text), false),
        Err(_) => (json!(BASE64.encode(&request.body)), true),
    };
    json!({
        "resource": resource,
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": proxy.map(|p| json!({"proxy": p})),
        "stageVariables": {"logsRole": "preset"},
        "requestContext": {
            "resourceId": "bench0",
            "resourcePath": resource,
            "httpMethod": request.method,
            "requestTimeEpoch": request.epoch_ms,
            "path": format!("/{STAGE}{}", request.path),
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": API_ID,
            "requestId": request.request_id,
            "identity": {"sourceIp": request.source_ip, "userAgent": null},
            "domainName": format!("{API_ID}.execute-api.eu-west-1.amazonaws.com"),
            "apiId": API_ID,
        },
        "body": body,
        "isBase64Encoded": base64,
    })
}

/// The answer for the function's proxy result, or why API Gateway would answer 502
/// ("Malformed Lambda proxy response").
pub fn http_answer(result: &Value) -> Result<Outgoing, String> {
    let status = result
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or("no statusCode in the proxy result")?;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(multi)) = result.get("multiValueHeaders") {
        for (name, values) in multi {
            for value in values.as_array().into_iter().flatten().filter_map(Value::as_str) {
                headers.push((name.clone(), value.to_owned()));
            }
        }
    }
    if let Some(Value::Object(single)) = result.get("headers") {
        for (name, value) in single {
            let known = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            if let (false, Some(value)) = (known, value.as_str()) {
                headers.push((name.clone(), value.to_owned()));
            }
        }
    }
    let text = result.get("body").and_then(Value::as_str).unwrap_or_default();
    let body = if result.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        BASE64.decode(text).map_err(|_| "a body marked base64 that is not")?
    } else {
        text.as_bytes().to_vec()
    };
    Ok(Outgoing { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Incoming {
        Incoming {
            method: method.into(),
            path: path.into(),
            query: query.map(str::to_owned),
            headers: vec![
                ("x-machine-id".into(), "m-1".into()),
                ("accept".into(), "a".into()),
                ("accept".into(), "b".into()),
            ],
            body: body.to_vec(),
            source_ip: "127.0.0.1".into(),
            request_id: "r-1".into(),
            epoch_ms: 1,
        }
    }

    #[test]
    fn a_vend_becomes_the_activation_resources_event_with_its_query_decoded() {
        let event = rest_proxy_event(&incoming("GET", "/activation", Some("pool=a%2Db&x=1&x=2"), b""));
        assert_eq!(event["resource"], "/activation");
        assert_eq!(event["queryStringParameters"], json!({"pool": "a-b", "x": "2"}));
        assert_eq!(event["multiValueQueryStringParameters"]["x"], json!(["1", "2"]));
        assert_eq!(event["headers"]["accept"], "b");
        assert_eq!(event["multiValueHeaders"]["accept"], json!(["a", "b"]));
        assert_eq!(event["headers"]["X-Forwarded-For"], "127.0.0.1");
        assert_eq!(event["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
        assert_eq!(event["body"], Value::Null);
        assert_eq!(event["pathParameters"], Value::Null);
    }

    #[test]
    fn registrations_go_through_the_proxy_resource_with_their_body_as_text() {
        let event = rest_proxy_event(&incoming("POST", "/registrations", None, b"{\"a\":1}"));
        assert_eq!(event["resource"], "/{proxy+}");
        assert_eq!(event["pathParameters"], json!({"proxy": "registrations"}));
        assert_eq!(event["body"], "{\"a\":1}");
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["queryStringParameters"], Value::Null);
    }

    #[test]
    fn a_body_that_is_not_utf8_goes_base64_and_comes_back_whole() {
        for bytes in [&[0xffu8, 0, 1][..], &[0xfe], &[0xff, 0xfe, 0xfd, 0xfc, 0x80]] {
            let event = rest_proxy_event(&incoming("POST", "/x", None, bytes));
            assert_eq!(event["isBase64Encoded"], true);
            let answer = http_answer(&json!({
                "statusCode": 200, "body": event["body"], "isBase64Encoded": true,
            }))
            .unwrap();
            assert_eq!(answer.body, bytes);
        }
    }

    #[test]
    fn the_proxy_result_becomes_status_headers_and_body() {
        let answer = http_answer(&json!({
            "statusCode": 503,
            "headers": {"retry-after": "2", "content-type": "application/json"},
            "multiValueHeaders": {"content-type": ["application/json"]},
            "body": "{\"error\":{}}",
            "isBase64Encoded": false,
        }))
        .unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.headers,
            vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("retry-after".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(answer.body, b"{\"error\":{}}");
    }

    #[test]
    fn each_template_method_is_its_own_api_method() {
        assert_eq!(api_method("/activation", "GET"), ("/activation", "GET"));
        assert_eq!(api_method("/activation", "DELETE"), ("/activation", "ANY"));
        assert_eq!(api_method("/registrations", "POST"), ("/{proxy+}", "ANY"));
        assert_eq!(api_method("/registrations", "GET"), ("/{proxy+}", "ANY"));
        assert_eq!(api_method("/", "GET"), ("/", "GET"));
    }

    #[test]
    fn a_result_without_a_status_is_malformed() {
        assert!(http_answer(&json!({"body": "x"})).is_err());
        assert!(http_answer(&json!({"statusCode": 99})).is_err());
    }
}

//! Talks to the emulator: its control routes, and a few bare AWS calls over the JSON
//! wire protocol. The emulator does not check signatures, so a dummy SigV4
//! `Authorization` header (which names the service) is all a request needs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::scenario::Fault;

/// `GET /_emulator/calls`: requests by operation since the last reset.
pub type Calls = BTreeMap<String, u64>;

/// How long one operation held the emulator (`GET /_emulator/busy`, by operation).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Busy {
    pub calls: u64,
    pub total_ms: f64,
    pub slowest_ms: f64,
}

/// One quota bucket as `GET /_emulator/quotas` shows it (the fields the bench reads).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Quota {
    #[serde(default)]
    pub throttled: u64,
    #[serde(default)]
    pub throttled_by_operation: BTreeMap<String, u64>,
}

/// What the pool's DynamoDB item says about its current activation.
pub struct PoolItem {
    pub activation_id: String,
    pub limit: u64,
    pub reserved: u64,
}

pub struct Emulator {
    http: reqwest::Client,
    url: String,
    table: String,
}

fn auth(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00"
    )
}

impl Emulator {
    pub fn new(url: &str, table: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            table: table.to_owned(),
        })
    }

    pub async fn calls(&self) -> Result<Calls, String> {
        self.read("calls").await
    }

    /// How long each operation held the emulator since the last reset.
    pub async fn busy(&self) -> Result<BTreeMap<String, Busy>, String> {
        self.read("busy").await
    }

    /// `GET /_emulator/<route>`, as JSON.
    async fn read<T: serde::de::DeserializeOwned>(&self, route: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(format!("{}/_emulator/{route}", self.url))
            .send()
            .await
            .map_err(|e| format!("GET /_emulator/{route}: {e}"))?;
        resp.json().await.map_err(|e| format!("GET /_emulator/{route}: {e}"))
    }

    /// The active quota buckets by name (empty when quotas are off).
    pub async fn quotas(&self) -> Result<BTreeMap<String, Quota>, String> {
        self.read("quotas").await
    }

    /// Every bucket at AWS's figure, full, its counts at 0 (`POST {"*": {}}`): what
    /// `EMULATOR_QUOTAS=aws-defaults` starts with, without what provisioning took.
    pub async fn reset_quotas(&self) -> Result<(), String> {
        self.control(reqwest::Method::POST, "quotas", Some(&json!({"*": {}})))
            .await
    }

    /// Quotas off (the bench's own calls after a run are not the service's).
    pub async fn clear_quotas(&self) -> Result<(), String> {
        self.control(reqwest::Method::DELETE, "quotas", None).await
    }

    pub async fn reset_calls(&self) -> Result<(), String> {
        self.control(reqwest::Method::DELETE, "calls", None).await
    }

    pub async fn set_faults(&self, faults: &[Fault]) -> Result<(), String> {
        let body = serde_json::to_value(faults).map_err(|e| format!("faults: {e}"))?;
        self.control(reqwest::Method::POST, "faults", Some(&body)).await
    }

    pub async fn clear_faults(&self) -> Result<(), String> {
        self.control(reqwest::Method::DELETE, "faults", None).await
    }

    async fn control(&self, method: reqwest::Method, route: &str, body: Option<&Value>) -> Result<(), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/_emulator/{route}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = request
            .send()
            .await
            .map_err(|e| format!("{method} /_emulator/{route}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{method} /_emulator/{route}: HTTP {}", resp.status()))
        }
    }

    /// One AWS JSON-protocol call; `Err` on transport failure or a non-200 answer.
    async fn aws(&self, service: &str, target: &str, json_version: &str, body: &Value) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!("{}/", self.url))
            .header("Content-Type", format!("application/x-amz-json-{json_version}"))
            .header("X-Amz-Target", target)
            .header("Authorization", auth(service))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{target}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{target}: HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{target}: {e}"))
    }

    /// Times `samples` bare conditional `UpdateItem`s (ADD + ReturnValues ALL_NEW, the
    /// shape of the hot path's write) on an item of the bench's own, after a warm-up.
    /// Returns the latencies in milliseconds.
    pub async fn time_update_item(&self, samples: usize) -> Result<Vec<f64>, String> {
        let body = json!({
            "TableName": self.table,
            "Key": {"pk": {"S": "bench#probe"}},
            "UpdateExpression": "ADD #n :one",
            "ConditionExpression": "attribute_not_exists(#n) OR #n < :max",
            "ExpressionAttributeNames": {"#n": "n"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":max": {"N": "1000000000"}},
            "ReturnValues": "ALL_NEW",
        });
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples + 10 {
            let started = Instant::now();
            self.aws("dynamodb", "DynamoDB_20120810.UpdateItem", "1.0", &body)
                .await?;
            if i >= 10 {
                out.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(out)
    }

    /// The pool item's current activation, if it has one.
    pub async fn pool_item(&self, pool: &str) -> Result<Option<PoolItem>, String> {
        let body = json!({
            "TableName": self.table,
            "Key": {"pk": {"S": format!("pool#{pool}")}},
            "ConsistentRead": true,
        });
        let out = self.aws("dynamodb", "DynamoDB_20120810.GetItem", "1.0", &body).await?;
        let item = &out["Item"];
        let n = |name: &str| -> Option<u64> { item[name]["N"].as_str()?.parse().ok() };
        Ok(item["activation_id"]["S"].as_str().map(|id| PoolItem {
            activation_id: id.to_owned(),
            limit: n("reg_limit").unwrap_or(0),
            reserved: n("reserved").unwrap_or(0),
        }))
    }

    /// RegistrationLimit of every activation the emulator knows, by ID.
    pub async fn activation_limits(&self) -> Result<HashMap<String, u64>, String> {
        Ok(self.activations_in_order().await?.into_iter().collect())
    }

    /// Every activation with its limit, oldest first (the emulator lists them in the
    /// order they were created).
    pub async fn activations_in_order(&self) -> Result<Vec<(String, u64)>, String> {
        let mut limits = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut body = json!({"MaxResults": 50});
            if let Some(t) = &token {
                body["NextToken"] = json!(t);
            }
            let page = self.aws("ssm", "AmazonSSM.DescribeActivations", "1.1", &body).await?;
            for a in page["ActivationList"].as_array().into_iter().flatten() {
                if let (Some(id), Some(limit)) = (a["ActivationId"].as_str(), a["RegistrationLimit"].as_u64()) {
                    limits.push((id.to_owned(), limit));
                }
            }
            match page["NextToken"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => return Ok(limits),
            }
        }
        Err("DescribeActivations: too many pages".into())
    }
}

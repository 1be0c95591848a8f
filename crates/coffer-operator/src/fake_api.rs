//! A small in-memory Kubernetes API server behind `tower_test::mock`, for controller tests: it
//! stores objects by path, answers get/list/watch/apply/merge-patch/status/json-patch/delete/event
//! calls the way the API server would (uids, resourceVersions, label and field selectors, watches
//! that replay every change after the resourceVersion they start from), and records every call
//! so a test can assert the exact sequence.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{channel::Channel, channel::Sender, Either, Full};
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};

/// One request the controller made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    /// `"PATCH /apis/apps/v1/namespaces/wallet/deployments/coffer-api"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The decoded value of a query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
    }

    fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

/// A stored change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    revision: u64,
    path: String,
    kind: &'static str,
    object: Value,
}

/// An open watch: a collection, its selectors, and where its events go.
struct Watch {
    collection: String,
    selectors: Selectors,
    events: Sender<Bytes>,
    /// Events not sent yet (a new watch's replay).
    pending: Vec<Bytes>,
}

#[derive(Default)]
pub struct FakeApi {
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<Call>,
    /// Serve the Prometheus Operator's `monitoring.coreos.com/v1` group.
    pub monitoring: bool,
    /// Report applied Deployments as fully available.
    pub deployments_available: bool,
    /// Paths this client may not read or write (403 Forbidden), as RBAC would refuse them.
    pub forbidden: Vec<String>,
    next_uid: u64,
    /// The resourceVersion of the latest change (one counter for every object, like etcd's).
    revision: u64,
    history: Vec<Change>,
    /// Changes not yet sent to the open watches.
    unsent: Vec<Change>,
    watches: Vec<Watch>,
}

type ResponseBody = Either<Full<Bytes>, Channel<Bytes>>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<ResponseBody>>;

/// Events a watch may hold before the server waits for its reader.
const WATCH_BUFFER: usize = 1024;

impl FakeApi {
    /// Stores `object` at its API path.
    pub fn put<K: Resource<DynamicType = ()> + Serialize>(&mut self, object: &K) {
        let path = format!(
            "{}/{}",
            K::url_path(&(), object.meta().namespace.as_deref()),
            object.name_any()
        );
        self.store(&path, serde_json::to_value(object).unwrap());
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    /// A client talking to this server; the server runs until every clone of the client is dropped.
    pub fn start(self) -> (Client, tokio::task::JoinHandle<FakeApi>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let client = Client::new(service, "default");
        (client, tokio::spawn(self.serve(handle)))
    }

    async fn serve(mut self, mut handle: Handle) -> FakeApi {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let response = if call.method == "GET" && call.is_watch() {
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Either::Right(self.open_watch(&call)))
                    .unwrap()
            } else {
                let (status, reply) = self.answer(&call);
                Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Either::Left(Full::new(Bytes::from(
                        serde_json::to_vec(&reply).unwrap(),
                    ))))
                    .unwrap()
            };
            self.calls.push(call);
            send.send_response(response);
            self.send_changes().await;
        }
        self
    }

    fn answer(&mut self, call: &Call) -> (StatusCode, Value) {
        let path = call.path.as_str();
        if self.forbidden.iter().any(|p| p == path) {
            return (
                StatusCode::FORBIDDEN,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": format!("{path} is forbidden") }),
            );
        }
        match call.method.as_str() {
            "GET" if path == "/apis/monitoring.coreos.com/v1" => self.discovery(),
            "GET" if is_collection(path) => (StatusCode::OK, self.list(call)),
            "GET" => match self.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(path),
            },
            "POST" if path.ends_with("/events") => (StatusCode::CREATED, call.body.clone()),
            "PATCH" if path.ends_with("/status") => {
                self.patch_status(path.trim_end_matches("/status"), &call.body)
            }
            "PATCH" if call.content_type.contains("json-patch") => self.json_patch(path, &call.body),
            "PATCH" if call.content_type.contains("merge-patch") => self.merge_patch(path, &call.body),
            "PATCH" => self.apply(path, call.body.clone()),
            "DELETE" if !self.preconditions_hold(path, &call.body) => (
                StatusCode::CONFLICT,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                    "message": format!("{path}: precondition failed") }),
            ),
            "DELETE" => match self.remove(path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
                ),
                None => not_found(path),
            },
            _ => panic!("the fake API server does not handle {} {path}", call.method),
        }
    }

    /// Stores `object` at `path` with a new resourceVersion (and a uid when it is new), and
    /// records the change for the watches.
    fn store(&mut self, path: &str, mut object: Value) -> Value {
        let existing_uid = self
            .objects
            .get(path)
            .map(|o| o["metadata"]["uid"].clone())
            .filter(|uid| !uid.is_null());
        let uid = existing_uid
            .or_else(|| Some(object["metadata"]["uid"].clone()).filter(|uid| !uid.is_null()))
            .unwrap_or_else(|| {
                self.next_uid += 1;
                json!(format!("uid-{}", self.next_uid))
            });
        object["metadata"]["uid"] = uid;
        // A write that changes nothing is no write: no new resourceVersion, no watch event (as
        // the API server does for a no-op apply; otherwise a controller watching what it applies
        // would loop).
        if let Some(existing) = self.objects.get(path) {
            object["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
            if *existing == object {
                return object;
            }
        }
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let kind = if self.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(path.to_string(), object.clone());
        self.record(path, kind, object.clone());
        object
    }

    fn remove(&mut self, path: &str) -> Option<Value> {
        let object = self.objects.remove(path)?;
        self.revision += 1;
        self.record(path, "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, path: &str, kind: &'static str, object: Value) {
        let change = Change {
            revision: self.revision,
            path: path.to_string(),
            kind,
            object,
        };
        self.history.push(change.clone());
        self.unsent.push(change);
    }

    /// A watch from `resourceVersion`: every matching change after it, then every new one.
    fn open_watch(&mut self, call: &Call) -> Channel<Bytes> {
        let (events, body) = Channel::new(WATCH_BUFFER);
        let from: u64 = call
            .param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.revision);
        let mut watch = Watch {
            collection: call.path.clone(),
            selectors: Selectors::of(call),
            events,
            pending: Vec::new(),
        };
        watch.pending = self
            .history
            .iter()
            .filter(|c| c.revision > from && watch.matches(c))
            .map(event_line)
            .collect();
        self.watches.push(watch);
        body
    }

    /// Sends the changes made by the last call (and a new watch's replay) to every open watch
    /// that selects them; a watch whose reader has gone is closed.
    async fn send_changes(&mut self) {
        let changes = std::mem::take(&mut self.unsent);
        let mut open = Vec::new();
        for mut watch in std::mem::take(&mut self.watches) {
            let lines: Vec<Bytes> = changes
                .iter()
                .filter(|c| watch.matches(c))
                .map(event_line)
                .collect();
            watch.pending.extend(lines);
            let mut alive = true;
            for line in std::mem::take(&mut watch.pending) {
                if watch.events.send_data(line).await.is_err() {
                    alive = false;
                    break;
                }
            }
            if alive {
                open.push(watch);
            }
        }
        self.watches = open;
    }

    fn discovery(&self) -> (StatusCode, Value) {
        if !self.monitoring {
            return not_found("/apis/monitoring.coreos.com/v1");
        }
        let resource = |name: &str, kind: &str| json!({ "name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get", "patch"] });
        (
            StatusCode::OK,
            json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
                "resources": [resource("servicemonitors", "ServiceMonitor"), resource("prometheusrules", "PrometheusRule")],
            }),
        )
    }

    fn list(&self, call: &Call) -> Value {
        let prefix = format!("{}/", call.path);
        let selectors = Selectors::of(call);
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| key.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/')))
            .filter(|(_, object)| selectors.select(object))
            .map(|(_, object)| object.clone())
            .collect();
        json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": self.revision.to_string() }, "items": items })
    }

    /// A delete's `preconditions.uid`, when given, must be the stored object's.
    fn preconditions_hold(&self, path: &str, body: &Value) -> bool {
        let wanted = &body["preconditions"]["uid"];
        wanted.is_null()
            || self
                .objects
                .get(path)
                .is_none_or(|o| &o["metadata"]["uid"] == wanted)
    }

    fn apply(&mut self, path: &str, mut object: Value) -> (StatusCode, Value) {
        if object["kind"] == "Deployment" && self.deployments_available {
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(1);
            object["status"] =
                json!({ "observedGeneration": 1, "replicas": replicas, "availableReplicas": replicas });
        }
        (StatusCode::OK, self.store(path, object))
    }

    /// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
    fn merge_patch(&mut self, path: &str, patch: &Value) -> (StatusCode, Value) {
        let Some(mut object) = self.objects.get(path).cloned() else {
            return not_found(path);
        };
        let spec_before = object["spec"].clone();
        merge(&mut object, patch);
        if object["spec"] != spec_before {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        (StatusCode::OK, self.store(path, object))
    }

    fn patch_status(&mut self, path: &str, body: &Value) -> (StatusCode, Value) {
        let Some(mut object) = self.objects.get(path).cloned() else {
            return not_found(path);
        };
        object["status"] = body["status"].clone();
        (StatusCode::OK, self.store(path, object))
    }

    /// The finalizer helper's patches: `test`, `add` and `remove` on `/metadata/finalizers`.
    fn json_patch(&mut self, path: &str, operations: &Value) -> (StatusCode, Value) {
        let Some(mut object) = self.objects.get(path).cloned() else {
            return not_found(path);
        };
        for operation in operations.as_array().unwrap() {
            let target = operation["path"].as_str().unwrap();
            match (operation["op"].as_str().unwrap(), target) {
                ("test", _) => {}
                ("add", "/metadata/finalizers") => {
                    object["metadata"]["finalizers"] = operation["value"].clone()
                }
                ("add", "/metadata/finalizers/-") => object["metadata"]["finalizers"]
                    .as_array_mut()
                    .unwrap()
                    .push(operation["value"].clone()),
                ("remove", _) if target.starts_with("/metadata/finalizers/") => {
                    let index: usize = target.rsplit('/').next().unwrap().parse().unwrap();
                    object["metadata"]["finalizers"]
                        .as_array_mut()
                        .unwrap()
                        .remove(index);
                }
                (op, _) => panic!("the fake API server does not handle json-patch {op} {target}"),
            }
        }
        (StatusCode::OK, self.store(path, object))
    }
}

impl Watch {
    fn matches(&self, change: &Change) -> bool {
        let in_collection = change
            .path
            .strip_prefix(&format!("{}/", self.collection))
            .is_some_and(|rest| !rest.contains('/'));
        in_collection && self.selectors.select(&change.object)
    }
}

/// `labelSelector` and `fieldSelector` equality terms (`a=b,c=d`), as the controllers use them.
#[derive(Clone, Debug, Default)]
struct Selectors {
    labels: Vec<(String, String)>,
    fields: Vec<(String, String)>,
}

impl Selectors {
    fn of(call: &Call) -> Selectors {
        let terms = |name| -> Vec<(String, String)> {
            call.param(name)
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|t| {
                    let (key, value) = t.split_once('=').expect("equality selectors only");
                    (key.to_string(), value.to_string())
                })
                .collect()
        };
        Selectors {
            labels: terms("labelSelector"),
            fields: terms("fieldSelector"),
        }
    }

    fn select(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|(k, v)| labels[k] == v.as_str())
            && self.fields.iter().all(|(field, v)| match field.as_str() {
                "metadata.name" => object["metadata"]["name"] == v.as_str(),
                "metadata.namespace" => object["metadata"]["namespace"] == v.as_str(),
                other => panic!("the fake API server does not select on {other}"),
            })
    }
}

fn event_line(change: &Change) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": change.kind, "object": change.object })).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// `/api/v1/namespaces/x/secrets` and `/apis/g/v/namespaces/x/kind` are collections.
fn is_collection(path: &str) -> bool {
    let segments = path.trim_start_matches('/').split('/').count();
    (path.starts_with("/api/") && segments == 5) || (path.starts_with("/apis/") && segments == 6)
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("{path} not found"),
        }),
    )
}

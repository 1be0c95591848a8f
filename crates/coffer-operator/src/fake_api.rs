//! A small in-memory Kubernetes API server behind `tower_test::mock`, for controller tests: it
//! stores objects by path, answers get/list/apply/status/json-patch/delete/event calls the way
//! the API server would, and records every call so a test can assert the exact sequence.

use std::collections::BTreeMap;

use http::{Request, Response, StatusCode};
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
}

#[derive(Default)]
pub struct FakeApi {
    pub objects: BTreeMap<String, Value>,
    pub calls: Vec<Call>,
    /// Serve the Prometheus Operator's `monitoring.coreos.com/v1` group.
    pub monitoring: bool,
    /// Report applied Deployments as fully available.
    pub deployments_available: bool,
    next_uid: u64,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

impl FakeApi {
    /// Stores `object` at its API path.
    pub fn put<K: Resource<DynamicType = ()> + Serialize>(&mut self, object: &K) {
        let path = format!(
            "{}/{}",
            K::url_path(&(), object.meta().namespace.as_deref()),
            object.name_any()
        );
        self.objects.insert(path, serde_json::to_value(object).unwrap());
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        self.objects.get(path)
    }

    /// A client talking to this server; the server runs until every clone of the client is dropped.
    pub fn start(self) -> (Client, tokio::task::JoinHandle<FakeApi>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
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
            let (status, reply) = self.answer(&call);
            self.calls.push(call);
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        self
    }

    fn answer(&mut self, call: &Call) -> (StatusCode, Value) {
        let path = call.path.as_str();
        match call.method.as_str() {
            "GET" if path == "/apis/monitoring.coreos.com/v1" => self.discovery(),
            "GET" if is_collection(path) => (StatusCode::OK, self.list(path)),
            "GET" => match self.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(path),
            },
            "POST" if path.ends_with("/events") => (StatusCode::CREATED, call.body.clone()),
            "PATCH" if path.ends_with("/status") => {
                self.patch_status(path.trim_end_matches("/status"), &call.body)
            }
            "PATCH" if call.content_type.contains("json-patch") => self.json_patch(path, &call.body),
            "PATCH" => self.apply(path, call.body.clone()),
            "DELETE" if !self.preconditions_hold(path, &call.body) => (
                StatusCode::CONFLICT,
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                    "message": format!("{path}: precondition failed") }),
            ),
            "DELETE" => match self.objects.remove(path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
                ),
                None => not_found(path),
            },
            _ => panic!("the fake API server does not handle {} {path}", call.method),
        }
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

    fn list(&self, path: &str) -> Value {
        let prefix = format!("{path}/");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| key.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/')))
            .map(|(_, object)| object.clone())
            .collect();
        json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items })
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
        // The server gives each new object a uid and keeps it across applies.
        self.next_uid += 1;
        let uid = self
            .objects
            .get(path)
            .map(|o| o["metadata"]["uid"].clone())
            .filter(|uid| !uid.is_null())
            .unwrap_or_else(|| json!(format!("uid-{}", self.next_uid)));
        object["metadata"]["uid"] = uid;
        if object["kind"] == "Deployment" && self.deployments_available {
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(1);
            object["status"] =
                json!({ "observedGeneration": 1, "replicas": replicas, "availableReplicas": replicas });
        }
        self.objects.insert(path.to_string(), object.clone());
        (StatusCode::OK, object)
    }

    fn patch_status(&mut self, path: &str, body: &Value) -> (StatusCode, Value) {
        let Some(object) = self.objects.get_mut(path) else {
            return not_found(path);
        };
        object["status"] = body["status"].clone();
        (StatusCode::OK, object.clone())
    }

    /// The finalizer helper's patches: `test`, `add` and `remove` on `/metadata/finalizers`.
    fn json_patch(&mut self, path: &str, operations: &Value) -> (StatusCode, Value) {
        let Some(object) = self.objects.get_mut(path) else {
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
        (StatusCode::OK, object.clone())
    }
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

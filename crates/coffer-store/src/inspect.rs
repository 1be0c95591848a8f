//! Which queries the code really sends, and whether the server answers them from an index
//! (issue 12: cost that does not grow with the ledger).
//!
//! A [`QueryLog`] installed through [`crate::StoreConfig::query_log`] records the filter and
//! sort of every read and write command the store sends (from the driver's command events).
//! [`Store::explain_recorded`] then asks the server for the plan of each distinct shape: a test
//! drives the money path and the relay, and fails on any query that scans a collection or sorts
//! in memory. Off by default: recording costs a copy of every command.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;

use crate::{Store, StoreError};

/// Most queries one log keeps (a test's flow sends far fewer).
const RECORDED_MAX: usize = 100_000;

/// One query as sent.
#[derive(Debug, Clone)]
struct Recorded {
    database: String,
    collection: String,
    command: String,
    filter: Document,
    sort: Option<Document>,
}

/// The queries a store sent, shared with the driver's event handler.
#[derive(Clone, Default)]
pub struct QueryLog {
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl std::fmt::Debug for QueryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLog").finish_non_exhaustive()
    }
}

/// The plan the server chose for one query shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanReport {
    pub collection: String,
    pub command: String,
    /// The filter with its values replaced by their types, and the sort: `{"_id":"$in"} sort {}`.
    pub shape: String,
    /// Every stage of the winning plan, outermost first (`FETCH`, `IXSCAN`, …).
    pub stages: Vec<String>,
    /// The index it uses, if any.
    pub index: Option<String>,
}

impl PlanReport {
    /// Reads every document of the collection.
    pub fn scans_collection(&self) -> bool {
        self.stages.iter().any(|s| s == "COLLSCAN")
    }

    /// Sorts in memory instead of reading an index in order.
    pub fn sorts_in_memory(&self) -> bool {
        self.stages.iter().any(|s| s == "SORT")
    }
}

impl QueryLog {
    pub fn new() -> Self {
        QueryLog::default()
    }

    /// Forgets what was recorded (e.g. after a test's set-up).
    pub fn clear(&self) {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) fn on_event(&self, event: &CommandEvent) {
        if let CommandEvent::Started(started) = event {
            self.record(&started.db, &started.command_name, &started.command);
        }
    }

    fn record(&self, database: &str, command_name: &str, command: &Document) {
        let Some(collection) = command.get_str(command_name).ok().map(str::to_string) else {
            return;
        };
        let queries: Vec<(Document, Option<Document>)> = match command_name {
            "find" => vec![(sub(command, "filter"), command.get_document("sort").ok().cloned())],
            "findAndModify" => vec![(sub(command, "query"), command.get_document("sort").ok().cloned())],
            "update" | "delete" => statements(command),
            "aggregate" | "count" => first_match(command).into_iter().map(|m| (m, None)).collect(),
            _ => Vec::new(),
        };
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        for (filter, sort) in queries {
            if recorded.len() < RECORDED_MAX {
                recorded.push(Recorded {
                    database: database.to_string(),
                    collection: collection.clone(),
                    command: command_name.to_string(),
                    filter,
                    sort,
                });
            }
        }
    }
}

fn sub(command: &Document, key: &str) -> Document {
    command.get_document(key).cloned().unwrap_or_default()
}

/// The `q` of every statement of an `update` or `delete` command.
fn statements(command: &Document) -> Vec<(Document, Option<Document>)> {
    let key = if command.contains_key("updates") {
        "updates"
    } else {
        "deletes"
    };
    let Ok(list) = command.get_array(key) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(Bson::as_document)
        .map(|s| (sub(s, "q"), None))
        .collect()
}

/// The first `$match` of an aggregation (what an index can serve), or a count's `query`.
fn first_match(command: &Document) -> Option<Document> {
    if let Ok(query) = command.get_document("query") {
        return Some(query.clone());
    }
    let pipeline = command.get_array("pipeline").ok()?;
    let first = pipeline.first()?.as_document()?;
    first.get_document("$match").ok().cloned()
}

/// A query's shape: field names and operators, values replaced by their BSON type.
fn shape_of(filter: &Document) -> Bson {
    let mut shape = Document::new();
    for (key, value) in filter {
        let part = match value {
            Bson::Document(inner) if inner.keys().any(|k| k.starts_with('$')) => shape_of(inner),
            Bson::Document(inner) if key.starts_with('$') => shape_of(inner),
            Bson::Array(items) if key.starts_with('$') => {
                Bson::Array(items.iter().filter_map(Bson::as_document).map(shape_of).collect())
            }
            other => Bson::String(format!("{:?}", other.element_type())),
        };
        shape.insert(key.clone(), part);
    }
    Bson::Document(shape)
}

fn stages(plan: &Document, into: &mut Vec<String>, index: &mut Option<String>) {
    if let Ok(stage) = plan.get_str("stage") {
        into.push(stage.to_string());
    }
    if let Ok(name) = plan.get_str("indexName") {
        index.get_or_insert_with(|| name.to_string());
    }
    for key in ["inputStage", "queryPlan"] {
        if let Ok(inner) = plan.get_document(key) {
            stages(inner, into, index);
        }
    }
    if let Ok(inputs) = plan.get_array("inputStages") {
        for inner in inputs.iter().filter_map(Bson::as_document) {
            stages(inner, into, index);
        }
    }
}

/// The winning plan of an explain reply (a find's, or the first `$cursor` stage of an aggregate's).
fn winning_plan(reply: &Document) -> Option<&Document> {
    if let Ok(planner) = reply.get_document("queryPlanner") {
        return planner.get_document("winningPlan").ok();
    }
    let stages = reply.get_array("stages").ok()?;
    let cursor = stages.first()?.as_document()?.get_document("$cursor").ok()?;
    cursor
        .get_document("queryPlanner")
        .ok()?
        .get_document("winningPlan")
        .ok()
}

impl Store {
    /// Whether this server reads an index in order to serve a sort (MongoDB does; a server that
    /// sorts every result in memory, even `_id` order on the primary index, does not).
    pub async fn sorts_from_indexes(&self) -> Result<bool, StoreError> {
        let find = doc! { "find": crate::collections::WALLETS, "filter": {}, "sort": { "_id": 1 } };
        let reply = self
            .db
            .run_command(doc! { "explain": find, "verbosity": "queryPlanner" })
            .await?;
        let (mut found, mut index) = (Vec::new(), None);
        if let Some(plan) = winning_plan(&reply) {
            stages(plan, &mut found, &mut index);
        }
        Ok(!found.iter().any(|s| s == "SORT"))
    }

    /// The plan of every distinct query shape `log` recorded against this store's database.
    pub async fn explain_recorded(&self, log: &QueryLog) -> Result<Vec<PlanReport>, StoreError> {
        let recorded = log.recorded.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut distinct: BTreeMap<String, Recorded> = BTreeMap::new();
        for query in recorded.into_iter().filter(|q| q.database == self.db.name()) {
            let sort = query.sort.clone().unwrap_or_default();
            let key = format!(
                "{} {} {} sort {}",
                query.collection,
                query.command,
                shape_of(&query.filter),
                Bson::Document(sort)
            );
            distinct.entry(key).or_insert(query);
        }
        let mut reports = Vec::new();
        for (shape, query) in distinct {
            let mut find = doc! { "find": &query.collection, "filter": query.filter.clone() };
            if let Some(sort) = &query.sort {
                find.insert("sort", sort.clone());
            }
            let reply = self
                .db
                .run_command(doc! { "explain": find, "verbosity": "queryPlanner" })
                .await?;
            let (mut found, mut index) = (Vec::new(), None);
            if let Some(plan) = winning_plan(&reply) {
                stages(plan, &mut found, &mut index);
            }
            reports.push(PlanReport {
                collection: query.collection,
                command: query.command,
                shape,
                stages: found,
                index,
            });
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_keeps_fields_and_operators_and_drops_values() {
        let a = doc! { "_id": { "$in": ["x", "y"] }, "version": 3i64, "$or": [ { "a": 1 }, { "b": { "$gt": 2 } } ] };
        let b =
            doc! { "_id": { "$in": ["z"] }, "version": 9i64, "$or": [ { "a": 7 }, { "b": { "$gt": 0 } } ] };
        assert_eq!(shape_of(&a), shape_of(&b));
        assert_ne!(shape_of(&a), shape_of(&doc! { "_id": "x" }));
    }

    #[test]
    fn the_stages_of_a_plan_are_read_outermost_first() {
        let plan = doc! { "stage": "FETCH", "inputStage": { "stage": "IXSCAN", "indexName": "by_user" } };
        let (mut found, mut index) = (Vec::new(), None);
        stages(&plan, &mut found, &mut index);
        assert_eq!(found, vec!["FETCH", "IXSCAN"]);
        assert_eq!(index.as_deref(), Some("by_user"));
    }
}

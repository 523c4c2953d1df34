//! The object store: every object of every served kind, one global
//! resourceVersion counter (as etcd has), and per-resource event history
//! for watches, bounded with compaction.
//!
//! Like kube-apiserver on etcd, the history is compacted by age (etcd
//! compacts every five minutes) as well as by count, and Events expire an
//! hour after their last write (`--event-ttl`): a server that runs for
//! hours holds what it held after its first few minutes. [`Inner::expire`]
//! does both, with the time passed in; the server calls it on a timer.
//!
//! Every write goes through [`Inner::commit`], which keeps the rules in one
//! place: metadata the server owns (uid, creationTimestamp, generation,
//! resourceVersion) is set here; generation moves only when something
//! outside metadata and status changes; a write that changes nothing bumps
//! nothing and emits no event; an object marked for deletion whose last
//! finalizer goes is removed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::errors::ApiError;
use super::registry::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};

/// How many past events each resource keeps for watch resumption.
pub const DEFAULT_HISTORY: usize = 10_000;
/// How long a past event stays in the history: etcd's compaction interval
/// in kube-apiserver (`--etcd-compaction-interval`, 5 minutes).
pub const DEFAULT_HISTORY_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long an Event lives after its last write (`--event-ttl`, 1 hour).
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(60 * 60);
/// Live-event buffer per resource. A watcher that falls this far behind
/// is closed, as a real API server's watch cache closes an unresponsive
/// watcher; its client watches again from the last version it saw.
pub const DEFAULT_WATCH_BUFFER: usize = 8_192;

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to one object.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (before it, for a deletion, with the
    /// deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change, to turn selector transitions into
    /// ADDED/DELETED for filtered watchers.
    pub old: Option<Arc<Value>>,
    /// When it happened, for compaction by age.
    pub at: Instant,
}

struct Collection {
    objects: BTreeMap<(String, String), Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Events up to this resourceVersion are no longer in the history.
    compacted_to: u64,
    /// When each object was last written, for kinds that expire (Events).
    written: BTreeMap<(String, String), Instant>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Collection {
    fn new(watch_buffer: usize) -> Self {
        Collection {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted_to: 0,
            written: BTreeMap::new(),
            tx: broadcast::channel(watch_buffer).0,
        }
    }
}

/// What one [`Inner::expire`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Past events dropped from the history.
    pub compacted: usize,
    /// Events (the kind) deleted for their age.
    pub deleted: usize,
}

/// Whether objects of this type expire a while after their last write:
/// Events, of either API group.
fn expires(rt: &ResourceType) -> bool {
    rt.plural == "events" && (rt.group.is_empty() || rt.group == "events.k8s.io")
}

/// Retained events to replay, and a receiver for live ones.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// Judge the write with the stored admission policies, for this
    /// caller; `None`: admission is off (or the server itself writes).
    pub admission: Option<Admission>,
}

/// Who writes, for admission.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The caller.
    pub user: super::rbac::UserInfo,
    /// `status` for a write through the status subresource.
    pub subresource: Option<String>,
}

/// What a list query asks for.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// labelSelector.
    pub labels: LabelSelector,
    /// fieldSelector.
    pub fields: FieldSelector,
    /// limit (0: none).
    pub limit: usize,
    /// continue token.
    pub continue_token: Option<String>,
}

/// The result of a list.
#[derive(Debug)]
pub struct ListResult {
    /// The items.
    pub items: Vec<Arc<Value>>,
    /// The list's resourceVersion (always watchable).
    pub resource_version: u64,
    /// Continue token when more items remain.
    pub continue_token: Option<String>,
    /// How many remain after this page.
    pub remaining: usize,
}

/// The object store.
pub struct Store {
    inner: Mutex<Inner>,
}

/// The store's state, behind one lock.
pub struct Inner {
    rv: u64,
    history_limit: usize,
    /// Past events older than this are compacted away.
    history_window: Duration,
    /// Events (the kind) older than this are deleted.
    event_ttl: Duration,
    /// Live events a watcher may fall behind before it is closed.
    watch_buffer: usize,
    /// Prune, default and validate custom resources per their schema.
    validate_custom: bool,
    builtins: Vec<ResourceType>,
    custom: Vec<ResourceType>,
    collections: HashMap<(String, String), Collection>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object)
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("metadata".into(), json!({}));
    }
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata is an object")
}

/// metadata.name of an object.
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Everything outside metadata and status: a change here bumps generation.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        o.remove(k);
    }
    Value::Object(o)
}

/// The object without the fields the server rewrites on every write.
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
        m.remove("generation");
    }
    o
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_HISTORY)
    }
}

impl Store {
    /// An empty store with the built-in kinds and namespaces `default`,
    /// `kube-system` and `kube-public`.
    pub fn new(history_limit: usize) -> Self {
        let mut inner = Inner {
            rv: 1,
            history_limit: history_limit.max(1),
            history_window: DEFAULT_HISTORY_WINDOW,
            event_ttl: DEFAULT_EVENT_TTL,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            validate_custom: true,
            builtins: registry::builtins(),
            custom: Vec::new(),
            collections: HashMap::new(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let rt = inner
                .find("", "v1", "namespaces")
                .expect("namespaces are built in");
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}});
            let _ = inner.create(&rt, None, obj, &WriteOptions::default());
        }
        Store {
            inner: Mutex::new(inner),
        }
    }

    /// Turn schema and CEL validation of custom resources off, as on a
    /// cluster whose CRDs predate their validation rules (tests use it to
    /// reach the operator's own validator with invalid specs).
    pub fn set_validate_custom_resources(&self, on: bool) {
        self.lock().validate_custom = on;
    }

    /// How many live events a watcher may fall behind before it is closed
    /// (at least 1). Applies to resources first written after the call.
    pub fn set_watch_buffer(&self, events: usize) {
        self.lock().watch_buffer = events.max(1);
    }

    /// How long past events stay watchable, and how long an Event lives
    /// after its last write (see [`Inner::expire`]).
    pub fn set_retention(&self, history_window: Duration, event_ttl: Duration) {
        let mut inner = self.lock();
        inner.history_window = history_window;
        inner.event_ttl = event_ttl;
    }

    /// Lock the store.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// Every served resource type.
    pub fn types(&self) -> impl Iterator<Item = &ResourceType> {
        self.builtins.iter().chain(self.custom.iter())
    }

    /// The type served at group/version/plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn collection(&mut self, rt: &ResourceType) -> &mut Collection {
        let buffer = self.watch_buffer;
        self.collections
            .entry(rt.storage_key())
            .or_insert_with(|| Collection::new(buffer))
    }

    /// The stored object at `key`, or 404.
    fn existing(
        &mut self,
        rt: &ResourceType,
        key: &(String, String),
    ) -> Result<Arc<Value>, ApiError> {
        self.collection(rt)
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &key.1))
    }

    /// Read one object.
    pub fn get(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = (ns.unwrap_or("").to_owned(), name.to_owned());
        let obj = self.existing(rt, &key)?;
        Ok(with_api_version(rt, obj))
    }

    /// List objects.
    pub fn list(&mut self, rt: &ResourceType, q: &ListQuery) -> Result<ListResult, ApiError> {
        let rv = self.rv;
        let start = match &q.continue_token {
            Some(t) => Some(decode_continue(t)?),
            None => None,
        };
        let coll = self.collection(rt);
        let mut matching = coll
            .objects
            .iter()
            .filter(|((ns, _), _)| q.namespace.as_deref().is_none_or(|want| want == ns))
            .filter(|(key, _)| start.as_ref().is_none_or(|s| *key > s))
            .filter(|(_, o)| {
                q.labels.matches_object(o) && (q.fields.0.is_empty() || q.fields.matches(o))
            })
            .map(|(k, o)| (k.clone(), o.clone()));
        let mut items = Vec::new();
        let mut last = None;
        for (k, o) in matching.by_ref() {
            if q.limit > 0 && items.len() == q.limit {
                // One more exists: hand out a token.
                let remaining = 1 + matching.count();
                return Ok(ListResult {
                    items: items.into_iter().map(|o| with_api_version(rt, o)).collect(),
                    resource_version: rv,
                    continue_token: last.map(|l: (String, String)| encode_continue(&l)),
                    remaining,
                });
            }
            last = Some(k);
            items.push(o);
        }
        Ok(ListResult {
            items: items.into_iter().map(|o| with_api_version(rt, o)).collect(),
            resource_version: rv,
            continue_token: None,
            remaining: 0,
        })
    }

    /// Subscribe to a resource's events after `from` (exclusive): the
    /// retained events to replay, and a receiver for live ones.
    pub fn subscribe(&mut self, rt: &ResourceType, from: u64) -> Result<Subscription, ApiError> {
        let current = self.rv;
        let coll = self.collection(rt);
        if from < coll.compacted_to && from < current {
            return Err(ApiError::expired(format!(
                "too old resource version: {from} ({})",
                coll.compacted_to + 1
            )));
        }
        let backlog = coll
            .history
            .iter()
            .filter(|e| e.rv > from)
            .cloned()
            .collect();
        Ok((backlog, coll.tx.subscribe()))
    }

    /// Current objects, for a watch that starts with synthetic ADDED events.
    pub fn snapshot(&mut self, rt: &ResourceType) -> (u64, Vec<Arc<Value>>) {
        let rv = self.rv;
        let items = self
            .collection(rt)
            .objects
            .values()
            .cloned()
            .map(|o| with_api_version(rt, o))
            .collect();
        (rv, items)
    }

    fn check_namespace(&mut self, rt: &ResourceType, ns: Option<&str>) -> Result<(), ApiError> {
        match (rt.namespaced, ns) {
            (true, None) => Err(ApiError::bad_request(
                "the namespace of the object does not match the namespace on the request",
            )),
            (true, Some(ns)) => {
                let nsrt = self
                    .find("", "v1", "namespaces")
                    .expect("namespaces are built in");
                let exists = self
                    .collection(&nsrt)
                    .objects
                    .contains_key(&(String::new(), ns.to_owned()));
                if exists {
                    Ok(())
                } else {
                    Err(ApiError::not_found("", "namespaces", ns))
                }
            }
            (false, _) => Ok(()),
        }
    }

    /// Create an object.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        self.check_namespace(rt, ns)?;
        merge_string_data(rt, &mut obj);
        if let Some(body_ns) = meta(&obj)
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            && rt.namespaced
            && Some(body_ns) != ns
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({})",
                ns.unwrap_or("")
            )));
        }
        let m = meta_mut(&mut obj);
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let generated = name.is_empty();
        if generated {
            let prefix = m
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            let suffix: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .chars()
                .take(5)
                .collect();
            name = format!("{prefix}{suffix}");
            m.insert("name".into(), json!(name));
        }
        if let Err(why) = check_name(rt, &name) {
            let field = if generated {
                "metadata.generateName"
            } else {
                "metadata.name"
            };
            return Err(ApiError::invalid(
                &rt.kind,
                &name,
                vec![(field.into(), format!("Invalid value: {name:?}: {why}"))],
            ));
        }
        check_labels(rt, &name, &obj)?;
        let key = (ns.unwrap_or("").to_owned(), name.clone());
        if self.collection(rt).objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.kind == "CustomResourceDefinition" {
            registry::from_crd(&obj)
                .map_err(|e| ApiError::invalid(&rt.kind, &name, vec![(e.field, e.message)]))?;
            crd_status(&mut obj);
        } else if rt.status_subresource
            && rt.kind != "Namespace"
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        let m = meta_mut(&mut obj);
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(k);
        }
        set_type_meta(rt, &mut obj);
        if let Some(schema) = rt.schema.as_ref().filter(|_| self.validate_custom) {
            super::schema::prune(schema, &mut obj, true);
            super::schema::default(schema, &mut obj);
            super::schema::validate(rt, &obj, None)?;
        }
        self.admit("CREATE", rt, ns, &name, Some(&obj), None, opts)?;
        if opts.dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
            return Ok(Arc::new(obj));
        }
        Ok(self.commit(rt, key, None, obj))
    }

    /// Store `new` over `old` (None: a create), applying the write rules.
    /// `new` must already carry uid and creationTimestamp.
    fn commit(
        &mut self,
        rt: &ResourceType,
        key: (String, String),
        old: Option<Arc<Value>>,
        mut new: Value,
    ) -> Arc<Value> {
        set_type_meta(rt, &mut new);
        if let Some(old) = &old {
            if comparable(old) == comparable(&new) {
                return with_api_version(rt, old.clone());
            }
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let bump = spec_part(old) != spec_part(&new);
            meta_mut(&mut new).insert(
                "generation".into(),
                json!(if bump { generation + 1 } else { generation }),
            );
        }
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let terminating = new.pointer("/metadata/deletionTimestamp").is_some();
        let gone = terminating && finalizers(&new).is_empty();
        let new = Arc::new(new);
        let kind = if gone {
            EventType::Deleted
        } else if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let limit = self.history_limit;
        let at = Instant::now();
        let coll = self.collection(rt);
        if gone {
            coll.objects.remove(&key);
            coll.written.remove(&key);
        } else {
            if expires(rt) {
                coll.written.insert(key.clone(), at);
            }
            coll.objects.insert(key.clone(), new.clone());
        }
        let event = Arc::new(Event {
            rv,
            kind,
            object: new.clone(),
            old,
            at,
        });
        coll.history.push_back(event.clone());
        while coll.history.len() > limit {
            if let Some(e) = coll.history.pop_front() {
                coll.compacted_to = e.rv;
            }
        }
        let _ = coll.tx.send(event);
        if rt.kind == "CustomResourceDefinition" {
            self.refresh_crds();
        }
        if gone {
            let uid = new
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            self.collect_garbage(&uid);
            if rt.kind == "Namespace" {
                self.purge_namespace(&key.1);
            }
        }
        with_api_version(rt, new)
    }

    fn refresh_crds(&mut self) {
        let crd_rt = self
            .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("CRDs are built in");
        let crds: Vec<Arc<Value>> = self.collection(&crd_rt).objects.values().cloned().collect();
        self.custom = crds
            .iter()
            .filter_map(|c| registry::from_crd(c).ok())
            .flatten()
            .collect();
    }

    /// Replace an object (PUT). `status_only` for the /status endpoint.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        status_only: bool,
        opts: &WriteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let key = (ns.unwrap_or("").to_owned(), name.to_owned());
        let old = self.existing(rt, &key)?;
        if name_of(&obj) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&obj)
            )));
        }
        if let Some(rv) = meta(&obj)
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            && rv
                != meta(&old)
                    .and_then(|m| m.get("resourceVersion"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let merged = if status_only {
            // Only status changes through /status.
            let mut m = (*old).clone();
            if let Some(o) = m.as_object_mut() {
                match obj.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            m
        } else {
            if rt.status_subresource {
                // The main endpoint keeps status.
                if let Some(o) = obj.as_object_mut() {
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
            }
            obj
        };
        self.write_existing(rt, key, old, merged, opts)
    }

    /// Finish a write over an existing object: keep server-owned metadata.
    pub fn write_existing(
        &mut self,
        rt: &ResourceType,
        key: (String, String),
        old: Arc<Value>,
        mut new: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        let old_meta = meta(&old).cloned().unwrap_or_default();
        merge_string_data(rt, &mut new);
        let m = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        m.insert("name".into(), json!(key.1));
        if rt.namespaced {
            m.insert("namespace".into(), json!(key.0));
        }
        if old_meta.contains_key("deletionTimestamp") {
            let new_finalizers = finalizers(&new);
            let old_finalizers = finalizers(&old);
            if new_finalizers.iter().any(|f| !old_finalizers.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &key.1,
                    vec![(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        check_labels(rt, &key.1, &new)?;
        if rt.kind == "CustomResourceDefinition" {
            registry::from_crd(&new)
                .map_err(|e| ApiError::invalid(&rt.kind, &key.1, vec![(e.field, e.message)]))?;
            crd_status(&mut new);
        }
        if let Some(schema) = rt.schema.as_ref().filter(|_| self.validate_custom) {
            super::schema::prune(schema, &mut new, true);
            super::schema::default(schema, &mut new);
            super::schema::validate(rt, &new, Some(&old))?;
        }
        let ns = (!key.0.is_empty()).then_some(key.0.as_str());
        self.admit("UPDATE", rt, ns, &key.1, Some(&new), Some(&old), opts)?;
        if opts.dry_run {
            return Ok(Arc::new(new));
        }
        Ok(self.commit(rt, key, Some(old), new))
    }

    /// Refuse a write that a bound ValidatingAdmissionPolicy denies (see
    /// [`super::admission`]); nothing when admission is off.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        operation: &'static str,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        object: Option<&Value>,
        old: Option<&Value>,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        let Some(adm) = &opts.admission else {
            return Ok(());
        };
        let all = |s: &mut Self, plural: &str| -> Vec<Arc<Value>> {
            s.find("admissionregistration.k8s.io", "v1", plural)
                .and_then(|t| s.list(&t, &ListQuery::default()).ok())
                .map(|l| l.items)
                .unwrap_or_default()
        };
        let policies = all(self, "validatingadmissionpolicies");
        let bindings = all(self, "validatingadmissionpolicybindings");
        let request = super::admission::Request {
            operation,
            rt,
            subresource: adm.subresource.as_deref(),
            namespace: ns,
            name,
            user: &adm.user,
            dry_run: opts.dry_run,
        };
        super::admission::admit(&policies, &bindings, &request, object, old)
    }

    /// The stored object at `key`, if any.
    pub fn current(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Arc<Value>> {
        self.collection(rt)
            .objects
            .get(&(ns.unwrap_or("").to_owned(), name.to_owned()))
            .cloned()
    }

    /// Delete an object: with finalizers it is only marked; without, it
    /// goes, and its dependents are collected (background propagation;
    /// `orphan` removes their owner references instead).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        orphan: bool,
        opts: &WriteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        let key = (ns.unwrap_or("").to_owned(), name.to_owned());
        let old = self.existing(rt, &key)?;
        self.admit("DELETE", rt, ns, name, None, Some(&old), opts)?;
        if opts.dry_run {
            return Ok(with_api_version(rt, old));
        }
        if orphan {
            let uid = old
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            self.orphan_dependents(&uid);
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(with_api_version(rt, old));
        }
        let mut new = (*old).clone();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        // Without finalizers, commit removes it at once: the DELETED event
        // carries the last state, and dependents are collected.
        Ok(self.commit(rt, key, Some(old), new))
    }

    /// Compact, as of `now`, the history events older than the window,
    /// and delete the Events whose last write is older than the TTL (their
    /// watchers see DELETED, as when etcd's lease on an Event runs out).
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut done = Expired::default();
        let window = self.history_window;
        for coll in self.collections.values_mut() {
            while let Some(e) = coll.history.front()
                && now.saturating_duration_since(e.at) >= window
            {
                coll.compacted_to = e.rv;
                coll.history.pop_front();
                done.compacted += 1;
            }
        }
        let ttl = self.event_ttl;
        let kinds: Vec<ResourceType> = self.types().filter(|t| expires(t)).cloned().collect();
        for rt in kinds {
            let stale: Vec<(String, String)> = self
                .collection(&rt)
                .written
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for (ns, name) in stale {
                let ns = (!ns.is_empty()).then_some(ns);
                let opts = WriteOptions::default();
                if self.delete(&rt, ns.as_deref(), &name, false, &opts).is_ok() {
                    done.deleted += 1;
                }
            }
        }
        done
    }

    /// Delete every object whose owner references name `uid`.
    fn collect_garbage(&mut self, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let dependents = self.find_dependents(uid);
        for (rt, ns, name) in dependents {
            let ns = (!ns.is_empty()).then_some(ns);
            let _ = self.delete(&rt, ns.as_deref(), &name, false, &WriteOptions::default());
        }
    }

    fn find_dependents(&self, uid: &str) -> Vec<(ResourceType, String, String)> {
        let mut out = Vec::new();
        for rt in self.types() {
            let Some(coll) = self.collections.get(&rt.storage_key()) else {
                continue;
            };
            if out
                .iter()
                .any(|(t, _, _): &(ResourceType, String, String)| {
                    t.storage_key() == rt.storage_key()
                })
            {
                continue;
            }
            for ((ns, name), o) in &coll.objects {
                let owned = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                    });
                if owned {
                    out.push((rt.clone(), ns.clone(), name.clone()));
                }
            }
        }
        out
    }

    fn orphan_dependents(&mut self, uid: &str) {
        for (rt, ns, name) in self.find_dependents(uid) {
            let Some(old) = self
                .collection(&rt)
                .objects
                .get(&(ns.clone(), name.clone()))
                .cloned()
            else {
                continue;
            };
            let mut new = (*old).clone();
            if let Some(refs) = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            self.commit(&rt, (ns, name), Some(old), new);
        }
    }

    fn purge_namespace(&mut self, ns: &str) {
        let mut doomed = Vec::new();
        for rt in self.types().filter(|t| t.namespaced) {
            if let Some(coll) = self.collections.get(&rt.storage_key()) {
                for (k, _) in coll.objects.range((ns.to_owned(), String::new())..) {
                    if k.0 != ns {
                        break;
                    }
                    doomed.push((rt.clone(), k.1.clone()));
                }
            }
        }
        for (rt, name) in doomed {
            let _ = self.delete(&rt, Some(ns), &name, false, &WriteOptions::default());
        }
    }
}

/// The object as served at this type's version.
pub fn with_api_version(rt: &ResourceType, obj: Arc<Value>) -> Arc<Value> {
    if obj.get("apiVersion").and_then(Value::as_str) == Some(rt.api_version().as_str()) {
        return obj;
    }
    let mut o = (*obj).clone();
    set_type_meta(rt, &mut o);
    Arc::new(o)
}

fn set_type_meta(rt: &ResourceType, obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(rt.api_version()));
        o.insert("kind".into(), json!(rt.kind));
    }
}

fn crd_status(crd: &mut Value) {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let now = now_rfc3339();
    if let Some(o) = crd.as_object_mut() {
        o.insert(
            "status".into(),
            json!({
                "acceptedNames": names,
                "storedVersions": [],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
            }),
        );
    }
}

/// Label keys and values as the API server checks them: a value is at
/// most 63 characters of `[-_.A-Za-z0-9]`, starting and ending with an
/// alphanumeric (or empty); a key is such a name, optionally after a DNS
/// subdomain prefix and `/`.
/// A Secret's `stringData` is write-only, as in kube-apiserver: each entry
/// is merged into `data` (base64), over a `data` entry of the same key, and
/// `stringData` is not stored.
fn merge_string_data(rt: &ResourceType, obj: &mut Value) {
    use base64::Engine as _;
    if !(rt.group.is_empty() && rt.plural == "secrets") {
        return;
    }
    let Some(o) = obj.as_object_mut() else { return };
    let Some(Value::Object(strings)) = o.remove("stringData") else {
        return;
    };
    let data = o.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        data[k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn check_labels(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    fn label_name(v: &str) -> Result<(), &'static str> {
        let b = v.as_bytes();
        if b.len() > 63 {
            return Err("must be no more than 63 characters");
        }
        let edges = b.first().zip(b.last());
        if b.is_empty()
            || edges.is_some_and(|(f, l)| f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            Ok(())
        } else {
            Err(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )
        }
    }
    let mut causes = Vec::new();
    // Annotations: keys are qualified names like label keys; keys and
    // values together at most 256 KiB.
    if let Some(annotations) = meta(obj)
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        const LIMIT: usize = 256 * 1024;
        let mut total = 0;
        for (k, v) in annotations {
            total += k.len() + v.as_str().map_or(0, str::len);
            let (prefix, key_name) = k
                .rsplit_once('/')
                .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
            if key_name.is_empty()
                || label_name(key_name).is_err()
                || !prefix.is_none_or(valid_name)
            {
                causes.push((
                    "metadata.annotations".to_owned(),
                    format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
            if !v.is_string() {
                causes.push((
                    "metadata.annotations".to_owned(),
                    format!("Invalid value: {v}: annotation values must be strings"),
                ));
            }
        }
        if total > LIMIT {
            causes.push((
                "metadata.annotations".to_owned(),
                format!("Too long: may not be more than {LIMIT} bytes"),
            ));
        }
    }
    let labels = meta(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &labels {
        let (prefix, key_name) = k
            .rsplit_once('/')
            .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
        let key_ok =
            !key_name.is_empty() && label_name(key_name).is_ok() && prefix.is_none_or(valid_name);
        if !key_ok {
            causes.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        match v.as_str().map(label_name) {
            Some(Ok(())) => {}
            Some(Err(why)) => causes.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: {:?}: {why}", v.as_str().unwrap_or_default()),
            )),
            None => causes.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: {v}: label values must be strings"),
            )),
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, name, causes))
    }
}

/// A name as the API server checks it for this kind: a DNS-1123 label
/// for Namespaces, a DNS-1035 label for Services, a path segment for RBAC
/// objects (`system:discovery` is a valid Role name), a DNS-1123
/// subdomain for everything else. The error reads as Kubernetes'.
fn check_name(rt: &ResourceType, name: &str) -> Result<(), String> {
    fn label(part: &str) -> bool {
        let b = part.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    }
    match rt.kind.as_str() {
        "Namespace" => {
            if name.len() > 63 {
                return Err("must be no more than 63 characters".into());
            }
            if !label(name) {
                return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into());
            }
        }
        "Service" => {
            if name.len() > 63 {
                return Err("must be no more than 63 characters".into());
            }
            if !label(name) || !name.as_bytes()[0].is_ascii_lowercase() {
                return Err("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into());
            }
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            if name == "." || name == ".." {
                return Err(format!("may not be '{name}'"));
            }
            for c in ['/', '%'] {
                if name.contains(c) {
                    return Err(format!("may not contain '{c}'"));
                }
            }
        }
        _ => {
            if !valid_name(name) {
                return Err(if name.len() > 253 {
                    "must be no more than 253 characters".into()
                } else {
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into()
                });
            }
        }
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels.
fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn encode_continue(key: &(String, String)) -> String {
    let raw = json!([key.0, key.1]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect();
    let v: Value = serde_json::from_slice(&bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    match (
        v.get(0).and_then(Value::as_str),
        v.get(1).and_then(Value::as_str),
    ) {
        (Some(ns), Some(name)) => Ok((ns.to_owned(), name.to_owned())),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, ResourceType, ResourceType) {
        let store = Store::new(DEFAULT_HISTORY);
        store.set_retention(Duration::from_secs(300), Duration::from_secs(3600));
        let (cms, events) = {
            let inner = store.lock();
            (
                inner.find("", "v1", "configmaps").expect("configmaps"),
                inner.find("", "v1", "events").expect("events"),
            )
        };
        (store, cms, events)
    }

    fn named(kind: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}})
    }

    #[test]
    fn past_events_older_than_the_window_are_compacted_and_resuming_before_them_is_410() {
        let (store, cms, _) = store();
        let mut s = store.lock();
        let start = Instant::now();
        let before = s.resource_version();
        let opts = WriteOptions::default();
        s.create(&cms, Some("default"), named("ConfigMap", "a"), &opts)
            .expect("create");
        // Inside the window: nothing goes, a resume replays the create.
        let kept = s.expire(start + Duration::from_secs(200));
        assert_eq!(kept.compacted, 0);
        let (backlog, _) = s.subscribe(&cms, before).expect("resumable");
        assert_eq!(backlog.len(), 1);
        // Past it: the event is compacted; resuming before it is 410 Gone,
        // resuming at the current version still works.
        let gone = s.expire(Instant::now() + Duration::from_secs(301));
        assert!(gone.compacted >= 1, "{gone:?}");
        let err = s.subscribe(&cms, before).expect_err("too old");
        assert_eq!(err.code, 410, "{}", err.message);
        let now = s.resource_version();
        let (backlog, _) = s.subscribe(&cms, now).expect("current");
        assert!(backlog.is_empty());
        assert!(s.get(&cms, Some("default"), "a").is_ok(), "objects stay");
    }

    #[test]
    fn an_event_expires_an_hour_after_its_last_write_and_its_watchers_see_it_go() {
        let (store, _, events) = store();
        let mut s = store.lock();
        let opts = WriteOptions::default();
        let born = Instant::now();
        s.create(&events, Some("default"), named("Event", "e1"), &opts)
            .expect("create");
        let at = s.resource_version();
        let (_, mut live) = s.subscribe(&events, at).expect("watch");
        assert_eq!(s.expire(born + Duration::from_secs(3000)).deleted, 0);
        assert!(s.get(&events, Some("default"), "e1").is_ok());
        // A write restarts its hour (an Event's series count goes up).
        let rewritten = Instant::now();
        let mut again = (*s.get(&events, Some("default"), "e1").expect("get")).clone();
        again["count"] = json!(2);
        s.update(&events, Some("default"), "e1", again, false, &opts)
            .expect("update");
        assert_eq!(s.expire(born + Duration::from_secs(3600)).deleted, 0);
        assert!(s.get(&events, Some("default"), "e1").is_ok());
        let done = s.expire(rewritten + Duration::from_secs(3601));
        assert_eq!(done.deleted, 1);
        assert_eq!(
            s.get(&events, Some("default"), "e1")
                .expect_err("gone")
                .code,
            404
        );
        let mut kinds = Vec::new();
        while let Ok(e) = live.try_recv() {
            kinds.push(e.kind);
        }
        assert_eq!(kinds, vec![EventType::Modified, EventType::Deleted]);
    }

    #[test]
    fn only_events_expire() {
        let (store, cms, _) = store();
        let mut s = store.lock();
        s.create(
            &cms,
            Some("default"),
            named("ConfigMap", "keep"),
            &WriteOptions::default(),
        )
        .expect("create");
        let done = s.expire(Instant::now() + Duration::from_secs(10 * 3600));
        assert_eq!(done.deleted, 0);
        assert!(s.get(&cms, Some("default"), "keep").is_ok());
    }
}

//! The SLO classes requests may name, shared between handlers and the control plane's
//! follower.

use super::HttpConfigError;
use std::collections::HashMap;
use std::sync::Arc;
use strata_transport::proto::SloClass;

/// SLO classes by name. Cheap to clone; clones share the table. A table always has its default
/// class: when the named default is not among the classes, the built-in `default` (10 s TTFT,
/// 100 ms TPOT) stands in.
#[derive(Debug, Clone)]
pub struct SloTable {
    inner: Arc<std::sync::RwLock<SloInner>>,
}

#[derive(Debug)]
struct SloInner {
    classes: HashMap<String, SloClass>,
    default_name: String,
}

impl Default for SloTable {
    fn default() -> Self {
        let builtin = SloClass::default();
        SloTable {
            inner: Arc::new(std::sync::RwLock::new(SloInner {
                default_name: builtin.name.clone(),
                classes: HashMap::from([(builtin.name.clone(), builtin)]),
            })),
        }
    }
}

impl SloTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, SloInner> {
        // Every update replaces whole fields: a poisoned lock still guards a valid table.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SloInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every class; the default class is kept (built in) if `classes` lacks it.
    pub fn replace(&self, classes: impl IntoIterator<Item = SloClass>) {
        let mut classes: HashMap<String, SloClass> =
            classes.into_iter().map(|c| (c.name.clone(), c)).collect();
        let mut inner = self.write();
        if !classes.contains_key(&inner.default_name) {
            let builtin = SloClass {
                name: inner.default_name.clone(),
                ..SloClass::default()
            };
            classes.insert(builtin.name.clone(), builtin);
        }
        inner.classes = classes;
    }

    /// Names the class of requests without the header.
    pub fn set_default_name(&self, name: &str) {
        self.write().default_name = name.to_owned();
    }

    pub fn get(&self, name: &str) -> Option<SloClass> {
        self.read().classes.get(name).cloned()
    }

    /// The class of requests that name none.
    pub fn default_class(&self) -> SloClass {
        let inner = self.read();
        inner
            .classes
            .get(&inner.default_name)
            .cloned()
            .unwrap_or_default()
    }

    /// Every class name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().classes.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    pub fn validate(&self) -> Result<(), HttpConfigError> {
        let inner = self.read();
        for class in inner.classes.values() {
            class.validate()?;
        }
        if !inner.classes.contains_key(&inner.default_name) {
            return Err(HttpConfigError::UnknownDefaultSlo {
                name: inner.default_name.clone(),
            });
        }
        Ok(())
    }
}

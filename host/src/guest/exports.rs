//! The world's exports, found by name once per compiled component, so that
//! a call looks up and type-checks only the one export it makes. bindgen's
//! `instantiate` looks up and type-checks all ten at every instantiation
//! (a sixth of a trivial call's time, mostly comparing the `error` variant's
//! case names).

use wasmtime::component::{ComponentExportIndex, ComponentNamedList, InstancePre, Lift, Lower};
use wasmtime::Store;

/// Where each export of `handlers` and `logic` sits in the component.
#[derive(Clone)]
pub struct Exports {
    pub get_card: ComponentExportIndex,
    pub create_card: ComponentExportIndex,
    pub patch_card: ComponentExportIndex,
    pub delete_card: ComponentExportIndex,
    pub write_source: ComponentExportIndex,
    pub delete_source: ComponentExportIndex,
    pub atomic: ComponentExportIndex,
    pub merge: ComponentExportIndex,
    pub serialize: ComponentExportIndex,
    pub validate_atomic: ComponentExportIndex,
}

const HANDLERS: &str = "boxel:realm/handlers@0.1.0";
const LOGIC: &str = "boxel:realm/logic@0.1.0";

impl Exports {
    /// Finds every export; fails naming the first one the component lacks.
    pub fn find<T>(pre: &InstancePre<T>) -> wasmtime::Result<Exports> {
        let component = pre.component();
        let lookup = |interface: &str, name: &str| {
            let instance = component
                .get_export_index(None, interface)
                .ok_or_else(|| wasmtime::format_err!("the component does not export `{interface}`"))?;
            component
                .get_export_index(Some(&instance), name)
                .ok_or_else(|| wasmtime::format_err!("the component's `{interface}` does not export `{name}`"))
        };
        Ok(Exports {
            get_card: lookup(HANDLERS, "get-card")?,
            create_card: lookup(HANDLERS, "create-card")?,
            patch_card: lookup(HANDLERS, "patch-card")?,
            delete_card: lookup(HANDLERS, "delete-card")?,
            write_source: lookup(HANDLERS, "write-source")?,
            delete_source: lookup(HANDLERS, "delete-source")?,
            atomic: lookup(HANDLERS, "atomic")?,
            merge: lookup(LOGIC, "merge")?,
            serialize: lookup(LOGIC, "serialize")?,
            validate_atomic: lookup(LOGIC, "validate-atomic")?,
        })
    }
}

/// Calls `export` of a fresh `instance` with `params`, type-checking that
/// export alone (a wrong signature is an error, never a misread).
pub async fn call_export<T, P, R>(
    store: &mut Store<T>,
    instance: &wasmtime::component::Instance,
    export: &ComponentExportIndex,
    params: P,
) -> wasmtime::Result<R>
where
    T: Send + 'static,
    P: ComponentNamedList + Lower + Send + Sync,
    (R,): ComponentNamedList + Lift + Send + Sync + 'static,
{
    let func = instance.get_typed_func::<P, (R,)>(&mut *store, export)?;
    let (answer,) = func.call_async(&mut *store, params).await?;
    Ok(answer)
}

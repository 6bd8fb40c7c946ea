//! Calling work written in other languages: a Python function named by its
//! module and qualified name, run by a Python worker (`python3 -m manta.worker`
//! in the job's runtime environment). Arguments and results cross as plain
//! msgpack values, so they must be types both languages read (numbers, strings,
//! bytes, lists, maps, and structs as maps); an `ObjectRef` argument is resolved
//! to its value first, as for Rust tasks.

use manta_proto::task::Language;
use serde::de::DeserializeOwned;

use crate::object_ref::{Arg, ObjectRef};
use crate::options::TaskOptions;

/// A Python function, by name (`manta::python_function("my_module", "add")`).
#[derive(Debug, Clone)]
pub struct PythonFunction {
    descriptor: String,
    name: String,
    options: TaskOptions,
}

/// The Python function `qualname` of `module` (importable by the job's Python
/// workers: from their `working_dir`, `py_modules`, `pip` packages or site-packages).
pub fn python_function(module: &str, qualname: &str) -> PythonFunction {
    PythonFunction {
        descriptor: format!("{module}:{qualname}"),
        name: qualname.rsplit('.').next().unwrap_or(qualname).to_string(),
        options: TaskOptions::default(),
    }
}

impl PythonFunction {
    /// The descriptor sent on the wire (`module:qualname`).
    pub fn descriptor(&self) -> &str {
        &self.descriptor
    }

    /// Runs with `options` (resources, retries, runtime env...) instead of the defaults.
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// Calls the function with `args` (each `Arg::value(&x)`, or a ref's `into_arg()`);
    /// the result decodes as `R` when it is read.
    pub fn remote<R: DeserializeOwned>(&self, args: Vec<Arg>) -> ObjectRef<R> {
        let mut refs =
            crate::api::submit_task_in(Language::Python, &self.descriptor, &self.name, args, self.options.clone(), 1);
        ObjectRef::from_untyped(refs.remove(0))
    }
}

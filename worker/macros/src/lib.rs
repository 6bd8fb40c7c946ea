//! The attribute macros of manta. Use them through the `manta` crate:
//! `#[manta::remote]`, `#[manta::actor]`, `#[manta::main]`.
//!
//! They register functions and actor classes with the linker (`linkme`), so a
//! worker process of the same binary can find them by key: the module path,
//! the name, and a hash of the signature (a mismatch is an error, not a crash).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, ImplItem, ItemFn, ItemImpl, Meta, Pat, ReturnType, Token, Type};

/// Turns a function into a remote function: `name::remote(args)` returns an
/// `ObjectRef`; options as `#[manta::remote(num_cpus = 2, max_retries = 1)]`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_remote(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Turns an `impl` block into an actor class: `Type::remote(ctor args)` creates
/// the actor and returns a `TypeHandle` whose methods return `ObjectRef`s.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_actor(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Marks `main`: when the raylet starts this binary as a worker, it serves
/// tasks and never runs the body.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut function = match syn::parse2::<ItemFn>(item.into()) {
        Ok(function) => function,
        Err(error) => return error.to_compile_error().into(),
    };
    let body = &function.block;
    *function.block = syn::parse_quote! {{
        ::manta::__private::serve_if_worker();
        #body
    }};
    quote! { #function }.into()
}

/// A short, stable hash of a signature's text (FNV-1a).
fn signature_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", hash as u32)
}

/// `name = value` options.
fn parse_options(attr: Tokens) -> syn::Result<Vec<(String, Expr)>> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut options = Vec::new();
    for meta in metas {
        match meta {
            Meta::NameValue(pair) => {
                let name = pair.path.get_ident().map(|ident| ident.to_string()).unwrap_or_default();
                options.push((name, pair.value));
            }
            other => return Err(syn::Error::new(other.span(), "expected `name = value`")),
        }
    }
    Ok(options)
}

/// The builder calls for options, e.g. `.num_cpus(2.0)`.
fn option_calls(options: &[(String, Expr)], allowed: &[&str]) -> syn::Result<Vec<Tokens>> {
    let mut calls = Vec::new();
    for (name, value) in options {
        if name == "num_returns" {
            continue;
        }
        if !allowed.contains(&name.as_str()) {
            return Err(syn::Error::new(
                value.span(),
                format!("unknown option `{name}`; expected one of: {}", allowed.join(", ")),
            ));
        }
        calls.extend(option_call(name, value)?);
    }
    Ok(calls)
}

/// The builder call(s) for one option. Resource amounts may be integers or floats
/// (the builders take `impl Into<f64>`); `resources = [("disk", 1), ..]` gives one
/// `.resource(..)` per pair; `lifetime = "detached"` takes Ray's string.
fn option_call(name: &str, value: &Expr) -> syn::Result<Vec<Tokens>> {
    match name {
        "resources" => {
            let Expr::Array(array) = value else {
                return Err(syn::Error::new(value.span(), "expected `resources = [(\"name\", amount), ..]`"));
            };
            let mut calls = Vec::new();
            for element in &array.elems {
                let Expr::Tuple(pair) = element else {
                    return Err(syn::Error::new(element.span(), "expected a `(\"name\", amount)` pair"));
                };
                if pair.elems.len() != 2 {
                    return Err(syn::Error::new(pair.span(), "expected a `(\"name\", amount)` pair"));
                }
                let (resource, amount) = (&pair.elems[0], &pair.elems[1]);
                calls.push(quote! { .resource(#resource, #amount) });
            }
            Ok(calls)
        }
        "lifetime" => match value {
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(text), .. }) => match text.value().as_str() {
                "detached" => Ok(vec![quote! { .lifetime(::manta::Lifetime::Detached) }]),
                "non_detached" => Ok(vec![quote! { .lifetime(::manta::Lifetime::NonDetached) }]),
                other => Err(syn::Error::new(
                    text.span(),
                    format!("unknown lifetime {other:?}; expected \"detached\" or \"non_detached\""),
                )),
            },
            _ => Ok(vec![quote! { .lifetime(#value) }]),
        },
        _ => {
            let method = format_ident!("{}", name);
            Ok(vec![quote! { .#method(#value) }])
        }
    }
}

/// `(name, type)` of each typed argument.
fn typed_args<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut args = Vec::new();
    for (index, input) in inputs.enumerate() {
        match input {
            FnArg::Typed(typed) => {
                let name = match &*typed.pat {
                    Pat::Ident(ident) => ident.ident.clone(),
                    _ => format_ident!("__arg{}", index),
                };
                args.push((name, (*typed.ty).clone()));
            }
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(receiver.span(), "unexpected receiver here"));
            }
        }
    }
    Ok(args)
}

/// The value type of a return type, and whether it is a `Result` (its `Err` is a task error).
fn value_type(output: &ReturnType) -> (Type, bool) {
    let ty = match output {
        ReturnType::Default => return (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Type::Path(path) = &ty
        && let Some(last) = path.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(arguments) = &last.arguments
        && let Some(syn::GenericArgument::Type(inner)) = arguments.args.first()
    {
        return (inner.clone(), true);
    }
    (ty, false)
}

/// Code that turns a call's result into encoded return values.
fn encode_returns(result: Tokens, is_result: bool, num_returns: usize, task_name: &Tokens) -> Tokens {
    let unwrap = if is_result {
        quote! {
            let __value = match #result {
                Ok(value) => value,
                Err(error) => return Err(::manta::__private::application_error(&error, #task_name)),
            };
        }
    } else {
        quote! { let __value = #result; }
    };
    let encode = if num_returns == 1 {
        quote! { vec![::manta::__private::encode(&__value, #task_name)?] }
    } else {
        let indices = (0..num_returns).map(syn::Index::from);
        quote! { vec![#(::manta::__private::encode(&__value.#indices, #task_name)?),*] }
    };
    quote! { #unwrap Ok(#encode) }
}

fn num_returns(options: &[(String, Expr)]) -> syn::Result<usize> {
    for (name, value) in options {
        if name == "num_returns" {
            if let Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(int), .. }) = value {
                let count: usize = int.base10_parse()?;
                if count == 0 {
                    return Err(syn::Error::new(int.span(), "num_returns must be at least 1"));
                }
                return Ok(count);
            }
            return Err(syn::Error::new(value.span(), "num_returns must be an integer literal"));
        }
    }
    Ok(1)
}

/// The typed refs a call returns: `ObjectRef<T>` or a tuple of them.
fn returned_refs(value: &Type, num_returns: usize) -> syn::Result<(Tokens, Tokens)> {
    if num_returns == 1 {
        return Ok((quote! { ::manta::ObjectRef<#value> }, quote! { ::manta::__private::typed_ref(__refs.remove(0)) }));
    }
    let Type::Tuple(tuple) = value else {
        return Err(syn::Error::new(value.span(), "num_returns > 1 needs a tuple return type"));
    };
    if tuple.elems.len() != num_returns {
        return Err(syn::Error::new(value.span(), "num_returns must match the tuple's length"));
    }
    let types: Vec<_> = tuple.elems.iter().collect();
    let conversions = types.iter().map(|_| quote! { ::manta::__private::typed_ref(__refs.next().unwrap()) });
    Ok((
        quote! { (#(::manta::ObjectRef<#types>),*) },
        quote! {{ let mut __refs = __refs.into_iter(); (#(#conversions),*) }},
    ))
}

const TASK_OPTIONS: [&str; 11] = [
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "max_retries",
    "retry_exceptions",
    "name",
    "num_returns",
    "env_var",
    "scheduling_strategy",
    "accelerator_type",
];

fn expand_remote(attr: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let function: ItemFn = syn::parse2(item)?;
    if let Some(asyncness) = function.sig.asyncness {
        return Err(syn::Error::new(asyncness.span(), "remote functions are synchronous; use an actor for async code"));
    }
    if !function.sig.generics.params.is_empty() {
        return Err(syn::Error::new(function.sig.generics.span(), "remote functions cannot be generic"));
    }
    let options = parse_options(attr)?;
    let calls = option_calls(&options, &TASK_OPTIONS)?;
    let num_returns = num_returns(&options)?;
    let name = &function.sig.ident;
    let vis = &function.vis;
    let args = typed_args(function.sig.inputs.iter())?;
    let (value, is_result) = value_type(&function.sig.output);
    let (ref_type, ref_conversion) = returned_refs(&value, num_returns)?;
    let arg_names: Vec<_> = args.iter().map(|(name, _)| name).collect();
    let arg_types: Vec<_> = args.iter().map(|(_, ty)| ty).collect();
    let signature = quote! { #(#arg_types),* -> #value }.to_string();
    let hash = signature_hash(&format!("{}({signature})", name));
    let task_name = quote! { stringify!(#name) };
    let indices: Vec<_> = (0..args.len()).collect();
    let call = quote! { super::#name(#(#arg_names),*) };
    let returns = encode_returns(call, is_result, num_returns, &task_name);
    let register = format_ident!("__MANTA_REMOTE_{}", name.to_string().to_uppercase());
    let num_returns_u32 = num_returns as u32;
    Ok(quote! {
        #function

        #[doc = concat!("The remote handle of [`", stringify!(#name), "`]: `", stringify!(#name), "::remote(..)`.")]
        #[allow(non_snake_case, dead_code)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The registry key: module path, name and signature hash.
            pub const KEY: &str = concat!(module_path!(), "#", #hash);

            /// The options given in the attribute.
            pub fn options() -> ::manta::TaskOptions {
                ::manta::TaskOptions::default() #(#calls)*
            }

            /// Submits the function with its default options.
            pub fn remote(#(#arg_names: impl ::manta::IntoArg<#arg_types>),*) -> #ref_type {
                with_options(options(), #(#arg_names),*)
            }

            /// Submits the function with `options` instead of the defaults.
            pub fn with_options(options: ::manta::TaskOptions, #(#arg_names: impl ::manta::IntoArg<#arg_types>),*) -> #ref_type {
                let __args = vec![#(::manta::IntoArg::<#arg_types>::into_arg(#arg_names)),*];
                let mut __refs = ::manta::__private::submit_task(KEY, #task_name, __args, options, #num_returns_u32);
                #ref_conversion
            }

            fn __invoke(__args: &[::manta::__private::Bytes]) -> ::manta::__private::TaskOutcome {
                #(let #arg_names: #arg_types = ::manta::__private::decode_arg(__args, #indices, #task_name)?;)*
                #returns
            }

            #[::manta::__private::linkme::distributed_slice(::manta::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::manta::__private::linkme)]
            static #register: ::manta::__private::RemoteFunction =
                ::manta::__private::RemoteFunction { key: KEY, invoke: __invoke };
        }
    })
}

const ACTOR_OPTIONS: [&str; 14] = [
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "accelerator_type",
    "scheduling_strategy",
    "env_var",
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
];

fn expand_actor(attr: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let calls = option_calls(&parse_options(attr)?, &ACTOR_OPTIONS)?;
    let block: ItemImpl = syn::parse2(item)?;
    if !block.generics.params.is_empty() || block.trait_.is_some() {
        return Err(syn::Error::new(block.span(), "#[manta::actor] goes on a plain `impl Type { .. }` block"));
    }
    let self_ty = &block.self_ty;
    let Type::Path(type_path) = &**self_ty else {
        return Err(syn::Error::new(self_ty.span(), "expected a type name"));
    };
    let type_name = type_path.path.segments.last().expect("a type path has a segment").ident.clone();
    let handle = format_ident!("{}Handle", type_name);
    let creator = format_ident!("{}Creator", type_name);

    let mut constructor = None;
    let mut methods = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(function) = item else { continue };
        match function.sig.inputs.first() {
            Some(FnArg::Receiver(receiver)) => match &receiver.kind {
                syn::ReceiverKind::Reference(_, _, mutability) => methods.push((function, mutability.is_some())),
                _ => return Err(syn::Error::new(receiver.span(), "actor methods take &self or &mut self")),
            },
            _ if function.sig.ident == "new" => constructor = Some(function),
            _ => {}
        }
    }
    let Some(constructor) = constructor else {
        return Err(syn::Error::new(block.span(), "an actor needs a constructor `fn new(..) -> Self`"));
    };
    let ctor_args = typed_args(constructor.sig.inputs.iter())?;
    let ctor_names: Vec<_> = ctor_args.iter().map(|(name, _)| name).collect();
    let ctor_types: Vec<_> = ctor_args.iter().map(|(_, ty)| ty).collect();
    let ctor_indices: Vec<_> = (0..ctor_args.len()).collect();
    let mut signature_text = format!("{type_name}::new({})", quote! { #(#ctor_types),* });

    let mut handle_methods = Vec::new();
    let mut dispatch_arms = Vec::new();
    let mut async_methods: Vec<String> = Vec::new();
    for (function, mutable) in &methods {
        let method = &function.sig.ident;
        let method_text = method.to_string();
        let args = typed_args(function.sig.inputs.iter().skip(1))?;
        let (value, is_result) = value_type(&function.sig.output);
        let names: Vec<_> = args.iter().map(|(name, _)| name).collect();
        let types: Vec<_> = args.iter().map(|(_, ty)| ty).collect();
        signature_text.push_str(&format!(";{method_text}({})->{}", quote! { #(#types),* }, quote! { #value }));
        let indices: Vec<_> = (0..args.len()).collect();
        let task_name = quote! { concat!(stringify!(#type_name), ".", stringify!(#method)) };
        let vis = &function.vis;
        handle_methods.push(quote! {
            /// Calls the actor method; the result arrives as an `ObjectRef`.
            #vis fn #method(&self, #(#names: impl ::manta::IntoArg<#types>),*) -> ::manta::ObjectRef<#value> {
                let __args = vec![#(::manta::IntoArg::<#types>::into_arg(#names)),*];
                ::manta::__private::typed_ref(self.inner.call_method(#method_text, __args))
            }
        });
        let decode =
            quote! { #(let #names: #types = ::manta::__private::decode_arg(&__args, #indices, #task_name)?;)* };
        if function.sig.asyncness.is_some() {
            async_methods.push(method_text.clone());
        }
        let arm = if function.sig.asyncness.is_some() {
            let guard = if *mutable {
                quote! { write }
            } else {
                quote! { read }
            };
            let result = quote! { __guard.#method(#(#names),*).await };
            let returns = encode_returns(result, is_result, 1, &task_name);
            quote! {
                #method_text => Ok(::manta::__private::MethodCall::Async(Box::pin(async move {
                    #decode
                    #[allow(unused_mut)]
                    let mut __guard = __cell.#guard().await;
                    #returns
                }))),
            }
        } else {
            let guard = if *mutable {
                quote! { blocking_write }
            } else {
                quote! { blocking_read }
            };
            let result = quote! { __guard.#method(#(#names),*) };
            let returns = encode_returns(result, is_result, 1, &task_name);
            quote! {
                #method_text => Ok(::manta::__private::MethodCall::Blocking(Box::new(move || {
                    #decode
                    #[allow(unused_mut)]
                    let mut __guard = __cell.#guard();
                    #returns
                }))),
            }
        };
        dispatch_arms.push(arm);
    }
    let hash = signature_hash(&signature_text);
    let register = format_ident!("__MANTA_ACTOR_{}", type_name.to_string().to_uppercase());
    let ctor_name = quote! { concat!(stringify!(#type_name), "::new") };

    Ok(quote! {
        #block

        /// A handle to a remote actor; cheap to clone, and can be passed to tasks and actors.
        #[derive(Clone, Debug)]
        pub struct #handle {
            inner: ::manta::ActorHandle,
        }

        impl #handle {
            #(#handle_methods)*
        }

        impl ::manta::TypedActorHandle for #handle {
            fn from_untyped(inner: ::manta::ActorHandle) -> Self {
                Self { inner }
            }
            fn untyped(&self) -> &::manta::ActorHandle {
                &self.inner
            }
        }

        impl ::manta::__private::serde::Serialize for #handle {
            fn serialize<S: ::manta::__private::serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                ::manta::__private::serde::Serialize::serialize(&self.inner, serializer)
            }
        }

        impl<'de> ::manta::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::manta::__private::serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                Ok(Self { inner: ::manta::ActorHandle::deserialize(deserializer)? })
            }
        }

        /// Creates the actor with options: `Type::options(opts).remote(args)`.
        #[derive(Debug)]
        pub struct #creator {
            options: ::manta::ActorOptions,
        }

        impl #creator {
            /// Creates the actor (or, with `get_if_exists`, finds it by name).
            pub fn remote(self, #(#ctor_names: impl ::manta::IntoArg<#ctor_types>),*) -> ::manta::Result<#handle> {
                let __args = vec![#(::manta::IntoArg::<#ctor_types>::into_arg(#ctor_names)),*];
                let inner = ::manta::__private::create_actor(<#self_ty as ::manta::ActorClass>::KEY, stringify!(#type_name), __args, self.options)?;
                Ok(#handle { inner })
            }
        }

        impl #self_ty {
            /// Creates the actor on the cluster with the options given in the attribute.
            pub fn remote(#(#ctor_names: impl ::manta::IntoArg<#ctor_types>),*) -> ::manta::Result<#handle> {
                #creator { options: Self::default_options() }.remote(#(#ctor_names),*)
            }

            /// The options given in `#[manta::actor(..)]`: start from these to change a few.
            pub fn default_options() -> ::manta::ActorOptions {
                ::manta::ActorOptions::default() #(#calls)*
            }

            /// Creates with exactly these options (resources, name, namespace, restarts, ...);
            /// `Type::options(Type::default_options().name("x"))` keeps the attribute's.
            pub fn options(options: ::manta::ActorOptions) -> #creator {
                #creator { options }
            }
        }

        impl ::manta::ActorClass for #self_ty {
            type Handle = #handle;
            const KEY: &'static str = concat!(module_path!(), "::", stringify!(#type_name), "#", #hash);
        }

        impl ::manta::__private::ActorDispatch for #self_ty {
            fn dispatch(
                __cell: &::manta::__private::ActorCell<Self>,
                __method: &str,
                __args: ::std::vec::Vec<::manta::__private::Bytes>,
            ) -> ::std::result::Result<::manta::__private::MethodCall, ::manta::__private::TaskFailure> {
                #[allow(unused_variables)]
                let __cell = __cell.clone();
                match __method {
                    #(#dispatch_arms)*
                    other => Err(::manta::__private::unknown_method(stringify!(#type_name), other)),
                }
            }
        }

        const _: () = {
            fn __create(__args: &[::manta::__private::Bytes]) -> ::std::result::Result<::std::boxed::Box<dyn ::manta::__private::ErasedActor>, ::manta::__private::TaskFailure> {
                #(let #ctor_names: #ctor_types = ::manta::__private::decode_arg(__args, #ctor_indices, #ctor_name)?;)*
                let __instance = <#self_ty>::new(#(#ctor_names),*);
                Ok(::std::boxed::Box::new(::manta::__private::ActorCell::new(__instance)))
            }

            fn __is_async(__method: &str) -> bool {
                [#(#async_methods),*].contains(&__method)
            }

            #[::manta::__private::linkme::distributed_slice(::manta::__private::ACTOR_CLASSES)]
            #[linkme(crate = ::manta::__private::linkme)]
            static #register: ::manta::__private::ActorClassEntry = ::manta::__private::ActorClassEntry {
                key: <#self_ty as ::manta::ActorClass>::KEY,
                create: __create,
                is_async: __is_async,
            };
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(attr: Tokens, allowed: &[&str]) -> syn::Result<String> {
        let calls = option_calls(&parse_options(attr)?, allowed)?;
        Ok(calls.iter().map(|call| call.to_string()).collect::<Vec<_>>().join(" "))
    }

    #[test]
    fn actor_options_become_builder_calls() {
        let text = calls(
            quote! { num_gpus = 1, max_restarts = 2, resources = [("disk", 1), ("ssd", 0.5)], lifetime = "detached" },
            &ACTOR_OPTIONS,
        )
        .unwrap();
        assert_eq!(
            text,
            ". num_gpus (1) . max_restarts (2) . resource (\"disk\" , 1) . resource (\"ssd\" , 0.5) \
             . lifetime (:: manta :: Lifetime :: Detached)"
        );
    }

    #[test]
    fn unknown_and_malformed_options_are_errors_that_say_what_to_write() {
        let unknown = calls(quote! { num_cpu = 1 }, &TASK_OPTIONS).unwrap_err().to_string();
        assert!(unknown.contains("unknown option `num_cpu`") && unknown.contains("num_cpus"), "{unknown}");
        let resources = calls(quote! { resources = 3 }, &TASK_OPTIONS).unwrap_err().to_string();
        assert!(resources.contains("resources = [(\"name\", amount)"), "{resources}");
        let lifetime = calls(quote! { lifetime = "forever" }, &ACTOR_OPTIONS).unwrap_err().to_string();
        assert!(lifetime.contains("\"detached\""), "{lifetime}");
        let not_for_actors = calls(quote! { max_retries = 1 }, &ACTOR_OPTIONS).unwrap_err().to_string();
        assert!(not_for_actors.contains("unknown option `max_retries`"), "{not_for_actors}");
    }
}

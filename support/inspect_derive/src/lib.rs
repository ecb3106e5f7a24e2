//! The `#[derive(Inspect)]` macro for the `inspect` crate: it writes `inspect::Inspect` for a
//! struct or enum from its shape and `#[inspect(...)]` attributes.
//!
//! Use it through `inspect` (`#[derive(inspect::Inspect)]`), whose crate documentation
//! describes the generated trees. In short:
//!
//! - structs become directories of their fields; unit structs empty directories;
//! - tuple structs name children `0`, `1`, ...; a tuple struct of one field is transparent;
//! - a variant without data is its name as written (or per `rename_all` / `rename`);
//! - a variant with data is a directory whose `state` child (or the `tag = "..."` name) is
//!   the variant's name, followed by its fields.
//!
//! Field attributes: `hex`, `skip`, `rename = "name"`, `display`, `debug`, `flatten`,
//! `with = "path::to::fn"` (a `fn(&T) -> inspect::Node`). Variant attribute: `rename`.
//! Container attributes: `transparent` (structs), `tag = "name"` and `rename_all =
//! "snake_case" | "lowercase"` (enums). Unknown or conflicting attributes and unions are
//! compile errors pointing at the offending tokens.

#![forbid(unsafe_code)]

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, parse_macro_input};

/// Derives `inspect::Inspect`; see the crate documentation for the attributes.
#[proc_macro_derive(Inspect, attributes(inspect))]
pub fn derive_inspect(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// How a field's value becomes a node.
enum Render {
    Inspect,
    Display,
    Debug,
    With(syn::Path),
}

struct FieldAttrs {
    hex: Option<Span>,
    skip: Option<Span>,
    rename: Option<(String, Span)>,
    flatten: Option<Span>,
    render: Render,
}

fn set_flag(slot: &mut Option<Span>, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error("duplicate inspect attribute"));
    }
    *slot = Some(meta.path.span());
    Ok(())
}

fn field_attrs(attrs: &[Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs {
        hex: None,
        skip: None,
        rename: None,
        flatten: None,
        render: Render::Inspect,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("inspect")) {
        attr.parse_nested_meta(|meta| {
            let mut render = |r: Render| {
                if !matches!(out.render, Render::Inspect) {
                    return Err(meta.error("only one of display, debug and with may be given"));
                }
                out.render = r;
                Ok(())
            };
            if meta.path.is_ident("display") {
                render(Render::Display)
            } else if meta.path.is_ident("debug") {
                render(Render::Debug)
            } else if meta.path.is_ident("with") {
                let s: syn::LitStr = meta.value()?.parse()?;
                render(Render::With(s.parse()?))
            } else if meta.path.is_ident("hex") {
                set_flag(&mut out.hex, &meta)
            } else if meta.path.is_ident("skip") {
                set_flag(&mut out.skip, &meta)
            } else if meta.path.is_ident("flatten") {
                set_flag(&mut out.flatten, &meta)
            } else if meta.path.is_ident("rename") {
                if out.rename.is_some() {
                    return Err(meta.error("duplicate inspect attribute"));
                }
                let s: syn::LitStr = meta.value()?.parse()?;
                out.rename = Some((s.value(), s.span()));
                Ok(())
            } else {
                Err(meta.error(
                    "unknown inspect attribute (expected hex, skip, rename, display, debug, \
                     flatten or with)",
                ))
            }
        })?;
    }
    if let Some(span) = out.hex {
        if matches!(out.render, Render::Display | Render::Debug) {
            return Err(syn::Error::new(
                span,
                "hex applies to integers, not to a display or debug string",
            ));
        }
    }
    if let (Some(span), Some(_)) = (out.flatten, &out.rename) {
        return Err(syn::Error::new(
            span,
            "a flattened field has no name of its own to rename",
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum RenameAll {
    AsWritten,
    Snake,
    Lower,
}

struct ContainerAttrs {
    transparent: Option<Span>,
    tag: Option<String>,
    rename_all: RenameAll,
    /// Where `tag` or `rename_all` was given, for the error on a struct.
    enum_only: Option<Span>,
}

fn container_attrs(attrs: &[Attribute]) -> syn::Result<ContainerAttrs> {
    let mut out = ContainerAttrs {
        transparent: None,
        tag: None,
        rename_all: RenameAll::AsWritten,
        enum_only: None,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("inspect")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("transparent") {
                set_flag(&mut out.transparent, &meta)
            } else if meta.path.is_ident("tag") {
                let s: syn::LitStr = meta.value()?.parse()?;
                out.tag = Some(s.value());
                out.enum_only = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("rename_all") {
                let s: syn::LitStr = meta.value()?.parse()?;
                out.rename_all = match s.value().as_str() {
                    "snake_case" => RenameAll::Snake,
                    "lowercase" => RenameAll::Lower,
                    _ => {
                        return Err(syn::Error::new(
                            s.span(),
                            "expected rename_all = \"snake_case\" or \"lowercase\"",
                        ));
                    }
                };
                out.enum_only = Some(meta.path.span());
                Ok(())
            } else {
                Err(meta.error(
                    "unknown inspect container attribute (expected transparent, tag or \
                     rename_all)",
                ))
            }
        })?;
    }
    Ok(out)
}

/// A variant's attributes: only `rename`.
fn variant_rename(attrs: &[Attribute]) -> syn::Result<Option<String>> {
    let mut rename = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("inspect")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let s: syn::LitStr = meta.value()?.parse()?;
                rename = Some(s.value());
                Ok(())
            } else {
                Err(meta.error("unknown inspect variant attribute (expected rename)"))
            }
        })?;
    }
    Ok(rename)
}

fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p));
            let next = chars.get(i + 1);
            // A word starts after a lower-case letter or digit, or at the last capital of an
            // acronym followed by a lower-case letter (`HTTPServer` -> `http_server`).
            let starts_word = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(|p| p.is_uppercase())
                    && next.is_some_and(|n| n.is_lowercase()));
            if starts_word {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The expression for one field's node, given an expression of type `&T` for the field. A
/// missing `Inspect` impl is reported at the field's type.
fn field_node(attrs: &FieldAttrs, field: &syn::Field, access: &TokenStream) -> TokenStream {
    let base = match &attrs.render {
        Render::Inspect => {
            quote_spanned!(field.ty.span()=> ::inspect::Inspect::inspect(#access))
        }
        Render::Display => quote!(::inspect::Node::display(#access)),
        Render::Debug => quote!(::inspect::Node::debug(#access)),
        Render::With(with) => quote!(#with(#access)),
    };
    if attrs.hex.is_some() {
        quote!(#base.hex())
    } else {
        base
    }
}

fn field_name(f: &syn::Field, index: usize) -> String {
    f.ident.as_ref().map_or_else(
        || index.to_string(),
        |id| id.to_string().trim_start_matches("r#").to_owned(),
    )
}

/// Builder calls adding `fields`, each reached through `access(index, field)`.
fn fields_to_builder(
    fields: &Fields,
    access: impl Fn(usize, &syn::Field) -> TokenStream,
) -> syn::Result<TokenStream> {
    let mut calls = TokenStream::new();
    for (i, f) in fields.iter().enumerate() {
        let attrs = field_attrs(&f.attrs)?;
        if attrs.skip.is_some() {
            continue;
        }
        let name = attrs
            .rename
            .as_ref()
            .map_or_else(|| field_name(f, i), |(n, _)| n.clone());
        let node = field_node(&attrs, f, &access(i, f));
        calls.extend(if attrs.flatten.is_some() {
            quote!(.merge(#name, #node))
        } else {
            quote!(.child(#name, #node))
        });
    }
    Ok(calls)
}

/// The expression for the node at `rest` below one field (an `Option<Node>`): straight
/// into the field's own `inspect_at` when it is shown as it inspects, else through its node.
fn field_at(
    attrs: &FieldAttrs,
    field: &syn::Field,
    access: &TokenStream,
    rest: &TokenStream,
) -> TokenStream {
    if matches!(attrs.render, Render::Inspect) && attrs.hex.is_none() {
        quote_spanned!(field.ty.span()=> ::inspect::Inspect::inspect_at(#access, #rest))
    } else {
        let node = field_node(attrs, field, access);
        quote!(::inspect::descend(#node, #rest))
    }
}

/// Match arms from a child's name to the node below it, or `None` when a flattened field
/// makes the names unknown here.
fn fields_at(
    fields: &Fields,
    access: impl Fn(usize, &syn::Field) -> TokenStream,
) -> syn::Result<Option<TokenStream>> {
    let mut arms = TokenStream::new();
    for (i, f) in fields.iter().enumerate() {
        let attrs = field_attrs(&f.attrs)?;
        if attrs.skip.is_some() {
            continue;
        }
        if attrs.flatten.is_some() {
            return Ok(None);
        }
        let name = attrs
            .rename
            .as_ref()
            .map_or_else(|| field_name(f, i), |(n, _)| n.clone());
        let at = field_at(&attrs, f, &access(i, f), &quote!(__inspect_rest));
        arms.extend(quote!(#name => #at,));
    }
    Ok(Some(arms))
}

/// Splits the segments; none means the whole node.
fn split_segments() -> TokenStream {
    quote! {
        let ::core::option::Option::Some((__inspect_first, __inspect_rest)) =
            __inspect_segments.split_first()
        else {
            return ::core::option::Option::Some(::inspect::Inspect::inspect(self));
        };
    }
}

/// The bodies of `inspect` and (unless the default serves) `inspect_at`, which sees the
/// path as `__inspect_segments`.
struct Bodies {
    inspect: TokenStream,
    inspect_at: Option<TokenStream>,
}

fn struct_body(
    input: &DeriveInput,
    fields: &Fields,
    container: &ContainerAttrs,
) -> syn::Result<Bodies> {
    if let Some(span) = container.enum_only {
        return Err(syn::Error::new(span, "tag and rename_all apply to enums"));
    }
    let access = |i: usize, f: &syn::Field| match &f.ident {
        Some(id) => quote!(&self.#id),
        None => {
            let idx = syn::Index::from(i);
            quote!(&self.#idx)
        }
    };
    let newtype = matches!(fields, Fields::Unnamed(u) if u.unnamed.len() == 1);
    if container.transparent.is_some() || newtype {
        let mut present = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            let attrs = field_attrs(&f.attrs)?;
            if attrs.skip.is_none() {
                present.push((i, f, attrs));
            }
        }
        let [(i, f, attrs)] = present.as_slice() else {
            return Err(syn::Error::new(
                container.transparent.unwrap_or_else(|| input.ident.span()),
                "#[inspect(transparent)] needs exactly one field that is not skipped",
            ));
        };
        if let Some((_, span)) = &attrs.rename {
            return Err(syn::Error::new(
                *span,
                "the field of a transparent struct has no name to rename",
            ));
        }
        if let Some(span) = attrs.flatten {
            return Err(syn::Error::new(
                span,
                "the field of a transparent struct cannot be flattened",
            ));
        }
        let access = access(*i, f);
        return Ok(Bodies {
            inspect: field_node(attrs, f, &access),
            inspect_at: Some(field_at(attrs, f, &access, &quote!(__inspect_segments))),
        });
    }
    let calls = fields_to_builder(fields, access)?;
    let inspect_at = fields_at(fields, access)?.map(|arms| {
        let split = split_segments();
        quote! {
            #split
            match *__inspect_first {
                #arms
                _ => ::core::option::Option::None,
            }
        }
    });
    Ok(Bodies {
        inspect: quote!(::inspect::Node::dir() #calls .build()),
        inspect_at,
    })
}

fn enum_body(e: &syn::DataEnum, container: &ContainerAttrs) -> syn::Result<Bodies> {
    if let Some(span) = container.transparent {
        return Err(syn::Error::new(
            span,
            "#[inspect(transparent)] applies to structs",
        ));
    }
    if e.variants.is_empty() {
        // `match self {}` is refused on a reference to an empty enum.
        return Ok(Bodies {
            inspect: quote!(match *self {}),
            inspect_at: Some(quote!(match *self {})),
        });
    }
    let tag = container.tag.as_deref().unwrap_or("state");
    let mut arms = TokenStream::new();
    let mut at_arms = TokenStream::new();
    for v in &e.variants {
        let vname = &v.ident;
        let written = vname.to_string();
        let written = written.trim_start_matches("r#");
        let label = match variant_rename(&v.attrs)? {
            Some(name) => name,
            None => match container.rename_all {
                RenameAll::AsWritten => written.to_owned(),
                RenameAll::Snake => snake_case(written),
                RenameAll::Lower => written.to_lowercase(),
            },
        };
        let binding = |i: usize| format_ident!("__inspect_field_{i}");
        let calls = fields_to_builder(&v.fields, |i, _| {
            let id = binding(i);
            quote!(#id)
        })?;
        let label_node = quote!(::inspect::Node::str(#label));
        let pattern = match &v.fields {
            Fields::Unit => quote!(Self::#vname),
            Fields::Named(named) => {
                let pats = named.named.iter().enumerate().map(|(i, f)| {
                    let id = &f.ident;
                    let b = binding(i);
                    quote!(#id: #b)
                });
                quote!(Self::#vname { #(#pats),* })
            }
            Fields::Unnamed(unnamed) => {
                let ids = (0..unnamed.unnamed.len()).map(binding);
                quote!(Self::#vname ( #(#ids),* ))
            }
        };
        if matches!(v.fields, Fields::Unit) {
            arms.extend(quote!(#pattern => #label_node,));
            at_arms
                .extend(quote!(#pattern => ::inspect::descend(#label_node, __inspect_segments),));
            continue;
        }
        arms.extend(quote!(#pattern => ::inspect::Node::dir()
            .child(#tag, #label_node) #calls .build(),));
        let field_arms = fields_at(&v.fields, |i, _| {
            let id = binding(i);
            quote!(#id)
        })?;
        at_arms.extend(match field_arms {
            Some(field_arms) => {
                let split = split_segments();
                quote!(#pattern => {
                    #split
                    match *__inspect_first {
                        #tag => ::inspect::descend(#label_node, __inspect_rest),
                        #field_arms
                        _ => ::core::option::Option::None,
                    }
                })
            }
            None => quote!(#pattern => ::inspect::descend(
                ::inspect::Inspect::inspect(self),
                __inspect_segments,
            ),),
        });
    }
    Ok(Bodies {
        inspect: quote!(match self { #arms }),
        inspect_at: Some(quote!(match self { #at_arms })),
    })
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::inspect::Inspect));
    }
    let (impl_g, ty_g, where_g) = generics.split_for_impl();
    let container = container_attrs(&input.attrs)?;
    let Bodies {
        inspect,
        inspect_at,
    } = match &input.data {
        Data::Struct(s) => struct_body(input, &s.fields, &container)?,
        Data::Enum(e) => enum_body(e, &container)?,
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                "#[derive(Inspect)] does not support unions",
            ));
        }
    };
    let inspect_at = inspect_at.map(|body| {
        quote! {
            // Two children of one name: the first is found, as in a query of the tree.
            #[allow(unused_variables, unreachable_patterns)]
            fn inspect_at(
                &self,
                __inspect_segments: &[&str],
            ) -> ::core::option::Option<::inspect::Node> {
                #body
            }
        }
    });
    Ok(quote! {
        #[automatically_derived]
        impl #impl_g ::inspect::Inspect for #name #ty_g #where_g {
            #[allow(unused_variables)]
            fn inspect(&self) -> ::inspect::Node {
                #inspect
            }

            #inspect_at
        }
    })
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    /// Variant names convert to snake case at case changes, keeping acronyms together.
    #[test]
    fn snake() {
        assert_eq!(snake_case("NotStarted"), "not_started");
        assert_eq!(snake_case("Done"), "done");
        assert_eq!(snake_case("D3Hot"), "d3_hot");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("IO"), "io");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }
}

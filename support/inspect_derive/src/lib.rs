//! The `#[derive(Inspect)]` macro for the `inspect` crate.
//!
//! Structs become directories of their fields; tuple structs name children `0`, `1`, ...;
//! enums without data become their variant's name (as written); enums with data become a
//! directory whose `state` child is the variant's name, followed by the variant's fields.
//!
//! Field attributes: `#[inspect(hex)]` (integers in hex), `#[inspect(skip)]`,
//! `#[inspect(rename = "name")]`, `#[inspect(display)]` / `#[inspect(debug)]` (a string from
//! `Display` / `Debug`), `#[inspect(flatten)]` (merge a child's directory into this one),
//! `#[inspect(with = "path::to::fn")]` (a `fn(&T) -> inspect::Node`). Container attribute:
//! `#[inspect(transparent)]` for a newtype that inspects as its one field.

#![forbid(unsafe_code)]

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, parse_macro_input};

/// Derives `inspect::Inspect`; see the crate documentation for the attributes.
#[proc_macro_derive(Inspect, attributes(inspect))]
pub fn derive_inspect(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Default)]
struct FieldAttrs {
    hex: bool,
    skip: bool,
    rename: Option<String>,
    display: bool,
    debug: bool,
    flatten: bool,
    with: Option<syn::Path>,
}

fn field_attrs(attrs: &[syn::Attribute]) -> syn::Result<FieldAttrs> {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("inspect")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("hex") {
                out.hex = true;
            } else if meta.path.is_ident("skip") {
                out.skip = true;
            } else if meta.path.is_ident("display") {
                out.display = true;
            } else if meta.path.is_ident("debug") {
                out.debug = true;
            } else if meta.path.is_ident("flatten") {
                out.flatten = true;
            } else if meta.path.is_ident("rename") {
                let s: syn::LitStr = meta.value()?.parse()?;
                out.rename = Some(s.value());
            } else if meta.path.is_ident("with") {
                let s: syn::LitStr = meta.value()?.parse()?;
                out.with = Some(s.parse()?);
            } else {
                return Err(meta.error(
                    "unknown inspect attribute (expected hex, skip, rename, display, debug, flatten or with)",
                ));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn container_transparent(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut transparent = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("inspect")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("transparent") {
                transparent = true;
                Ok(())
            } else {
                Err(meta.error("unknown inspect container attribute (expected transparent)"))
            }
        })?;
    }
    Ok(transparent)
}

/// The expression for one field's node, given an expression referring to the field.
fn field_node(attrs: &FieldAttrs, access: &TokenStream) -> TokenStream {
    let base = if let Some(with) = &attrs.with {
        quote!(#with(#access))
    } else if attrs.display {
        quote!(::inspect::Node::display(#access))
    } else if attrs.debug {
        quote!(::inspect::Node::debug(#access))
    } else {
        quote!(::inspect::Inspect::inspect(#access))
    };
    if attrs.hex { quote!(#base.hex()) } else { base }
}

/// Builder calls adding `fields`, each reached through `access(index, ident)`.
fn fields_to_builder(
    fields: &Fields,
    access: impl Fn(usize, Option<&syn::Ident>) -> TokenStream,
) -> syn::Result<TokenStream> {
    let mut calls = TokenStream::new();
    for (i, f) in fields.iter().enumerate() {
        let attrs = field_attrs(&f.attrs)?;
        if attrs.skip {
            continue;
        }
        let name = attrs.rename.clone().unwrap_or_else(|| {
            f.ident.as_ref().map_or_else(
                || i.to_string(),
                |id| id.to_string().trim_start_matches("r#").to_owned(),
            )
        });
        let node = field_node(&attrs, &access(i, f.ident.as_ref()));
        calls.extend(if attrs.flatten {
            quote!(.merge(#name, #node))
        } else {
            quote!(.child(#name, #node))
        });
    }
    Ok(calls)
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let mut generics = input.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::inspect::Inspect));
    }
    let (impl_g, ty_g, where_g) = generics.split_for_impl();
    let transparent = container_transparent(&input.attrs)?;
    let body = match &input.data {
        Data::Struct(s) => {
            if transparent {
                if s.fields.len() != 1 {
                    return Err(syn::Error::new(
                        input.span(),
                        "#[inspect(transparent)] needs exactly one field",
                    ));
                }
                let access = match s.fields.iter().next().and_then(|f| f.ident.clone()) {
                    Some(id) => quote!(&self.#id),
                    None => quote!(&self.0),
                };
                quote!(::inspect::Inspect::inspect(#access))
            } else {
                let calls = fields_to_builder(&s.fields, |i, id| match id {
                    Some(id) => quote!(&self.#id),
                    None => {
                        let idx = syn::Index::from(i);
                        quote!(&self.#idx)
                    }
                })?;
                quote!(::inspect::Node::dir() #calls .build())
            }
        }
        Data::Enum(e) => {
            if transparent {
                return Err(syn::Error::new(
                    input.span(),
                    "#[inspect(transparent)] applies to structs",
                ));
            }
            let mut arms = TokenStream::new();
            for v in &e.variants {
                let vname = &v.ident;
                let label = vname.to_string();
                let arm = match &v.fields {
                    Fields::Unit => quote!(Self::#vname => ::inspect::Node::str(#label),),
                    Fields::Named(named) => {
                        let ids: Vec<_> =
                            named.named.iter().filter_map(|f| f.ident.clone()).collect();
                        let calls = fields_to_builder(&v.fields, |_, id| quote!(#id))?;
                        quote!(Self::#vname { #(#ids),* } => ::inspect::Node::dir()
                            .child("state", ::inspect::Node::str(#label)) #calls .build(),)
                    }
                    Fields::Unnamed(unnamed) => {
                        let ids: Vec<_> = (0..unnamed.unnamed.len())
                            .map(|i| format_ident!("f{i}"))
                            .collect();
                        let calls = fields_to_builder(&v.fields, |i, _| {
                            let id = format_ident!("f{i}");
                            quote!(#id)
                        })?;
                        quote!(Self::#vname ( #(#ids),* ) => ::inspect::Node::dir()
                            .child("state", ::inspect::Node::str(#label)) #calls .build(),)
                    }
                };
                arms.extend(arm);
            }
            quote!(match self { #arms })
        }
        Data::Union(_) => {
            return Err(syn::Error::new(
                input.span(),
                "#[derive(Inspect)] does not support unions",
            ));
        }
    };
    Ok(quote! {
        impl #impl_g ::inspect::Inspect for #name #ty_g #where_g {
            #[allow(unused_variables)]
            fn inspect(&self) -> ::inspect::Node {
                #body
            }
        }
    })
}

//! `wscap-hookcost` defines the callbacks a dynamic module imports from Envoy: export them from
//! the executable's dynamic symbol table, so that the `dlopen`ed `libwscap.so` resolves them.
fn main() {
    println!("cargo:rustc-link-arg-bin=wscap-hookcost=-rdynamic");
}

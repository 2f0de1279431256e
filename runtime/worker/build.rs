//! With the `python` feature: records the embedded Python's version, and puts libpython's
//! directory in the binary's RUNPATH (otherwise another installation's libpython of the same
//! soname, e.g. the system's, may be loaded at run time).

fn main() {
    #[cfg(feature = "python")]
    {
        let config = pyo3_build_config::get();
        println!("cargo:rustc-env=CELERIAC_BUILD_PYTHON={}.{}", config.version().major, config.version().minor);
        pyo3_build_config::add_libpython_rpath_link_args();
    }
}

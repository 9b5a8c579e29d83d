//! Unit tests link without Envoy: inert definitions of every imported callback, so hooks can be
//! called directly (they must not reach a callback in a way that matters to the test).

use super::sys::{EnvoyBuffer, ModuleBuffer, ModuleHeader};
use std::ffi::c_void;

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _: *mut c_void,
    _: i32,
    _: ModuleBuffer,
    _: *mut EnvoyBuffer,
    _: usize,
    _: *mut usize,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_cluster_name(
    _: *mut c_void,
    _: *mut EnvoyBuffer,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_get_most_specific_route_config(
    _: *mut c_void,
) -> *const c_void {
    std::ptr::null()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_upstream_override_host(
    _: *mut c_void,
    _: ModuleBuffer,
    _: bool,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    _: *mut c_void,
    _: i32,
    _: *mut EnvoyBuffer,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _: *mut c_void,
    _: u32,
    _: *const ModuleHeader,
    _: usize,
    _: ModuleBuffer,
    _: ModuleBuffer,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response_headers(
    _: *mut c_void,
    _: *const ModuleHeader,
    _: usize,
    _: bool,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response_data(
    _: *mut c_void,
    _: ModuleBuffer,
    _: bool,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _: *mut c_void,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _: *mut c_void,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
    _: *mut c_void,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
    _: *mut c_void,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
    _: *mut c_void,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
    _: *mut c_void,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram(
    _: *mut c_void,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
    _: *mut c_void,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
    _: *mut c_void,
    _: ModuleBuffer,
    _: ModuleBuffer,
    _: bool,
    _: bool,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_admin_set_response(
    _: *mut c_void,
    _: ModuleBuffer,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
    _: *mut c_void,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_enable_cluster_lifecycle(
    _: *mut c_void,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_new(
    _: *mut c_void,
) -> *mut c_void {
    std::ptr::null_mut()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
    _: *mut c_void,
    _: u64,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_delete(_: *mut c_void) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_cluster_name(
    _: *mut c_void,
    _: *mut EnvoyBuffer,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_priority_set_size(_: *mut c_void) -> usize {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_hosts_count(_: *mut c_void, _: u32) -> usize {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_hosts_count(
    _: *mut c_void,
    _: u32,
) -> usize {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_host_address(
    _: *mut c_void,
    _: u32,
    _: usize,
    _: *mut EnvoyBuffer,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_host_address(
    _: *mut c_void,
    _: u32,
    _: usize,
    _: *mut EnvoyBuffer,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_host_health(
    _: *mut c_void,
    _: u32,
    _: usize,
) -> i32 {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_host_metadata_number(
    _: *mut c_void,
    _: u32,
    _: usize,
    _: ModuleBuffer,
    _: ModuleBuffer,
    _: *mut f64,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_context_get_override_host(
    _: *mut c_void,
    _: *mut EnvoyBuffer,
    _: *mut bool,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_new(
    _: *mut c_void,
) -> *mut c_void {
    std::ptr::null_mut()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_commit(_: *mut c_void, _: u64) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(_: *mut c_void) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(_: *mut c_void) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_reset_stream(
    _: *mut c_void,
    _: i32,
    _: ModuleBuffer,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(_: i32, _: ModuleBuffer) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log_enabled(_: i32) -> bool {
    false
}

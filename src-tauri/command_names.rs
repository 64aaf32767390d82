/// Every command the UI may call: the same list as `generate_handler!` in src-tauri/lib.rs and the
/// `allow-*` grants in capabilities/default.json (tests/app/security.rs checks they agree).
/// Included by build.rs (the app's ACL manifest) and by the tests, so the list is written once.
const COMMANDS: [&str; 23] = [
    "app_info",
    "acknowledge_privacy",
    "pick_photos",
    "stage_photo",
    "unstage_photo",
    "create_job",
    "list_jobs",
    "cancel_job",
    "delete_job",
    "delete_output",
    "export_output",
    "set_retention_days",
    "delete_all_data",
    "preview_photo",
    "export_outputs",
    "set_favourite",
    "pick_folder",
    "start_batch",
    "batch_status",
    "cancel_batch",
    "list_models",
    "model_license",
    "set_device",
];

fn main() { let _ = matrix_sdk::Client::builder(); let _ = std::any::type_name::<matrix_sdk_ui::sync_service::SyncService>(); }

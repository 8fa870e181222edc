pub struct SqliteStore; impl SqliteStore { pub async fn open(_p:&str)->Result<Self,super::StoreError>{Err(super::StoreError::Internal("sqlite not built yet".into()))} }

"""/v1/models."""

from fastapi import APIRouter

from services.api.deps import CatalogDep, TenantDep
from services.api.schemas import ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelsPublic)
def read_models(_tenant: TenantDep, catalog: CatalogDep) -> ModelsPublic:
    return ModelsPublic(data=catalog.describe())

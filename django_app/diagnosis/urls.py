from django.urls import path

from . import api, confirmations, model_history, views, worklist
from .shadow import views as shadow

urlpatterns = [
    path("", views.index, name="index"),
    path("upload/", views.upload, name="upload"),
    path("history/", views.history, name="history"),
    path("worklist/", worklist.worklist, name="worklist"),
    path("models/<str:version>/card", views.card, name="model_card"),
    path("results/<uuid:pk>/", views.result, name="result"),
    path("results/<uuid:pk>/confirm", confirmations.confirm, name="confirm"),  # before <kind>
    path("results/<uuid:pk>/<str:kind>", views.image, name="image"),
    path("account/api-token/", views.api_token, name="api_token"),
    path("api/v1/", api.v1_urls()),
    # the first, unversioned routes: aliases until api.LEGACY_SUNSET (Deprecation / Sunset headers)
    path("api/predict", api.legacy_predict, name="api_predict"),
    path("api/results/<uuid:pk>/confirmation", api.legacy(confirmations.api_confirmation), name="api_confirmation"),
    path("healthz", views.healthz, name="healthz"),
    path("staff/drift/", views.drift, name="drift"),
    path("staff/models/", model_history.model_history, name="model_history"),
    path("staff/confirmations/", confirmations.queue, name="confirmations"),
    path("staff/confirmations/<int:pk>/adjudicate", confirmations.adjudicate, name="adjudicate"),
    path("staff/performance/", confirmations.performance, name="performance"),
    path("staff/shadow/", shadow.page, name="shadow"),
    path("staff/shadow/<int:pk>/<str:kind>", shadow.image, name="shadow_image"),
]

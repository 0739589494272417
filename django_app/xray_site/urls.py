from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from diagnosis import views

admin.site.site_header = "Chest X-ray assistant: administration"
admin.site.site_title = "Chest X-ray assistant"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/mfa/", views.mfa_verify, name="mfa_verify"),
    path("accounts/mfa/setup/", views.mfa_setup, name="mfa_setup"),
    path("admin/", admin.site.urls),
    path("", include("diagnosis.urls")),
]

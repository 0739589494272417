from django import forms


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files under one name; each one is checked by diagnosis.analysis, not here, so
    that one bad file does not stop the others."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_empty_file", True)  # reported per file by diagnosis.analysis
        kwargs.setdefault("widget", MultipleFileInput(attrs={
            "accept": ".jpg,.jpeg,.png,.dcm,image/jpeg,image/png,application/dicom",
            "multiple": True,
        }))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, (list, tuple)) and not data:
            data = None  # nothing chosen: the "required" message
        if isinstance(data, (list, tuple)):
            return [single(d, initial) for d in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    images = MultipleFileField(
        label="Chest X-ray images",
        help_text="JPEG, PNG or DICOM (.dcm), frontal chest radiographs.",
        error_messages={"required": "Choose at least one image.", "empty": "empty file: nothing was uploaded"},
    )

    def __init__(self, *args, max_files: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_files = max_files

    def clean_images(self):
        files = self.cleaned_data["images"]
        if len(files) > self.max_files:
            raise forms.ValidationError(f"At most {self.max_files} images at a time.")
        return files
